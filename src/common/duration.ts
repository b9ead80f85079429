// Parses human durations (`500ms`, `3s`, `2m`, `1h`, `1d`, or a bare number of milliseconds) as
// used by every flag and environment variable that takes a time.

const UNITS: Readonly<Record<string, number>> = Object.freeze({
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
});

const PATTERN = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$/;

/** Returns milliseconds, or throws naming the bad value. */
export function parseDuration(text: string): number {
  const match = PATTERN.exec(text.trim());
  if (!match) throw new Error(`invalid duration "${text}" (use e.g. 500ms, 3s, 2m, 1h)`);
  const value = Number(match[1]) * UNITS[match[2] ?? "ms"];
  return Math.round(value);
}

/** Formats milliseconds the way parseDuration reads them back. */
export function formatDuration(ms: number): string {
  if (ms % 3_600_000 === 0 && ms > 0) return `${ms / 3_600_000}h`;
  if (ms % 60_000 === 0 && ms > 0) return `${ms / 60_000}m`;
  if (ms % 1000 === 0 && ms > 0) return `${ms / 1000}s`;
  return `${ms}ms`;
}

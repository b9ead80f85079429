// Parses human durations (`500ms`, `3s`, `2m`, `1h`, `1d`, or a bare number of milliseconds) as
// used by every flag, environment variable and query parameter that takes a time.
//
// Bound: a duration is at most MAX_DURATION_MS (100 years). Past that a value is a typo or an
// attack, and it breaks what it feeds: `now - d` falls outside the Date range (an Invalid Date that
// the store refuses with a 500) and a timer above 2^31-1 ms fires at once. Callers turn the error
// into their own shape: the API into 400 RD_ERR_INVALID_DURATION, the CLI into a usage error.

/** Longest duration parseDuration accepts: 100 years of 365 days. */
export const MAX_DURATION_MS = 100 * 365 * 86_400_000;

const UNITS: Readonly<Record<string, number>> = Object.freeze({
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
});

/** At most 20 digits before the point: longer is out of range whatever the unit. */
const PATTERN = /^(\d{1,20}(?:\.\d{1,9})?)(ms|s|m|h|d)?$/;

/** A duration that does not parse or is out of range; `message` names the value and the fix. */
export class InvalidDurationError extends Error {
  readonly code = "RD_ERR_INVALID_DURATION";
}

/** Returns milliseconds (0 to MAX_DURATION_MS), or throws InvalidDurationError naming the value. */
export function parseDuration(text: string, options: { maxMs?: number } = {}): number {
  const max = options.maxMs ?? MAX_DURATION_MS;
  const match = PATTERN.exec(text.trim());
  if (!match) throw new InvalidDurationError(`invalid duration "${text}" (use e.g. 500ms, 3s, 2m, 1h, 7d)`);
  const value = Math.round(Number(match[1]) * UNITS[match[2] ?? "ms"]);
  if (!Number.isFinite(value) || value > max)
    throw new InvalidDurationError(`duration "${text}" is out of range (at most ${formatDuration(max)})`);
  return value;
}

/** Formats milliseconds the way parseDuration reads them back. */
export function formatDuration(ms: number): string {
  if (ms % 86_400_000 === 0 && ms > 0) return `${ms / 86_400_000}d`;
  if (ms % 3_600_000 === 0 && ms > 0) return `${ms / 3_600_000}h`;
  if (ms % 60_000 === 0 && ms > 0) return `${ms / 60_000}m`;
  if (ms % 1000 === 0 && ms > 0) return `${ms / 1000}s`;
  return `${ms}ms`;
}

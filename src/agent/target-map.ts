// Which local services an agent serves through its tunnel. A call names its target by the HTTP/2
// `:authority`; the agent forwards only to targets on this map (anything else gets 403).
// `--local ADDR` maps every name to ADDR; `--target NAME=ADDR` builds an allow-list.

import { InvalidOptionError } from "../common/errors.ts";

export type TargetAddress = { kind: "tcp"; host: string; port: number } | { kind: "unix"; path: string };

export function parseTargetAddress(text: string): TargetAddress {
  if (text.startsWith("unix://")) {
    const path = text.slice("unix://".length);
    if (!path.startsWith("/"))
      throw new InvalidOptionError("target", `unix socket path must be absolute: ${text}`);
    return { kind: "unix", path };
  }
  const match = /^(\[[^\]]+\]|[^:]+):(\d{1,5})$/.exec(text);
  const port = match ? Number(match[2]) : Number.NaN;
  if (!match || port < 1 || port > 65535) {
    throw new InvalidOptionError("target", `expected host:port or unix:///path, got "${text}"`);
  }
  return { kind: "tcp", host: match[1].replace(/^\[|\]$/g, ""), port };
}

export function formatTargetAddress(t: TargetAddress): string {
  return t.kind === "unix"
    ? `unix://${t.path}`
    : `${t.host.includes(":") ? `[${t.host}]` : t.host}:${t.port}`;
}

export class TargetMap {
  readonly #named = new Map<string, TargetAddress>();
  readonly #fallback: TargetAddress | null;

  /**
   * @param named allow-listed targets by name.
   * @param fallback served for every name not on the list; null for a strict allow-list.
   */
  constructor(named: Record<string, string>, fallback: string | null) {
    for (const [name, addr] of Object.entries(named))
      this.#named.set(name.toLowerCase(), parseTargetAddress(addr));
    this.#fallback = fallback === null ? null : parseTargetAddress(fallback);
  }

  /** Builds the map from the agent's flags: `--local` alone is a wildcard; `--target` an allow-list. */
  static fromFlags(local: string | undefined, targets: string[]): TargetMap {
    const named: Record<string, string> = {};
    for (const spec of targets) {
      const eq = spec.indexOf("=");
      if (eq <= 0) throw new InvalidOptionError("--target", `expected NAME=ADDR, got "${spec}"`);
      named[spec.slice(0, eq)] = spec.slice(eq + 1);
    }
    if (targets.length === 0) return new TargetMap({}, local ?? "127.0.0.1:9876");
    // With an allow-list, --local (when given) serves the default target name only.
    if (local !== undefined && !("desktop" in named)) named.desktop = local;
    return new TargetMap(named, null);
  }

  resolve(authority: string | undefined): TargetAddress | null {
    const name = (authority ?? "").toLowerCase();
    return this.#named.get(name) ?? this.#fallback;
  }

  describe(): string {
    const parts = [...this.#named].map(([n, a]) => `${n}=${formatTargetAddress(a)}`);
    if (this.#fallback) parts.push(`*=${formatTargetAddress(this.#fallback)}`);
    return parts.join(", ");
  }
}

// Prometheus metrics of the control plane, on a registry owned by the app (not prom-client's global
// one, so two servers in one process, as in tests, do not collide). The tunnel registry reports
// through the RegistryObserver hooks; HTTP requests through countRequest (request-log.ts).

import client from "prom-client";
import type { EndpointCounters } from "./tunnel/tunnel-endpoint.ts";
import type { RegistryObserver } from "./tunnel/tunnel-registry.ts";

export class ApiMetrics {
  readonly registry = new client.Registry();
  readonly tunnelsConnected: client.Gauge;
  readonly registrations: client.Counter;
  readonly replacements: client.Counter;
  readonly calls: client.Counter;
  readonly callSeconds: client.Histogram;
  readonly bytes: client.Counter;
  readonly graceWaits: client.Counter;
  readonly httpRequests: client.Counter;
  #byteSources: Array<() => { in: number; out: number }> = [];
  /** route -> requests answered since the last scrape, by status class (index 1-5: 1xx-5xx). */
  readonly #answered = new Map<string, number[]>();

  constructor(tunnelCount: () => number) {
    const registers = [this.registry];
    client.collectDefaultMetrics({ register: this.registry, prefix: "revdial_process_" });
    this.tunnelsConnected = new client.Gauge({
      name: "revdial_tunnels_connected",
      help: "Live tunnels on this server",
      registers,
      collect() {
        this.set(tunnelCount());
      },
    });
    this.registrations = new client.Counter({
      name: "revdial_tunnel_registrations_total",
      help: "Tunnels registered, by protocol",
      labelNames: ["protocol"],
      registers,
    });
    this.replacements = new client.Counter({
      name: "revdial_tunnel_replacements_total",
      help: "Tunnels closed because a newer agent registered the same runner id",
      registers,
    });
    this.calls = new client.Counter({
      name: "revdial_tunnel_calls_total",
      help: "Calls through tunnels, by outcome",
      labelNames: ["outcome"],
      registers,
    });
    this.callSeconds = new client.Histogram({
      name: "revdial_tunnel_call_duration_seconds",
      help: "Time from a call's start to its response headers",
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15, 30],
      registers,
    });
    const sources = () => this.#byteSources;
    let reported = { in: 0, out: 0 };
    this.bytes = new client.Counter({
      name: "revdial_tunnel_bytes_total",
      help: "Bytes carried by tunnels (link level), by direction from the server's side",
      labelNames: ["direction"],
      registers,
      collect() {
        const total = { in: 0, out: 0 };
        for (const s of sources()) {
          const b = s();
          total.in += b.in;
          total.out += b.out;
        }
        if (total.in > reported.in) this.inc({ direction: "in" }, total.in - reported.in);
        if (total.out > reported.out) this.inc({ direction: "out" }, total.out - reported.out);
        reported = { in: Math.max(total.in, reported.in), out: Math.max(total.out, reported.out) };
      },
    });
    this.graceWaits = new client.Counter({
      name: "revdial_tunnel_grace_waits_total",
      help: "Calls that waited for a dropped tunnel to come back, by outcome",
      labelNames: ["outcome"],
      registers,
    });
    const answered = this.#answered;
    this.httpRequests = new client.Counter({
      name: "revdial_http_requests_total",
      help: "HTTP requests answered, by route and status class",
      labelNames: ["route", "status"],
      registers,
      collect() {
        for (const [route, byClass] of answered) {
          for (let c = 1; c < byClass.length; c++) {
            if (byClass[c] === 0) continue;
            this.inc({ route, status: `${c}xx` }, byClass[c]);
            byClass[c] = 0;
          }
        }
      },
    });
  }

  /**
   * Counts one answered request in revdial_http_requests_total. Called on the hot path, so it only
   * adds to a plain array; the counter is brought up to date when /metrics is read.
   */
  countRequest(route: string, status: number): void {
    let byClass = this.#answered.get(route);
    if (!byClass) {
      byClass = [0, 0, 0, 0, 0, 0];
      this.#answered.set(route, byClass);
    }
    byClass[Math.min(5, Math.max(1, Math.floor(status / 100)))]++;
  }

  /**
   * Exports the tunnel endpoint's counters: refused handshakes by status, and links dropped by the
   * liveness rules (no HTTP/2 preface in time, no PING answer within the dead-link timeout).
   */
  addEndpointCounters(read: () => EndpointCounters): void {
    const registers = [this.registry];
    const seen = new Map<string, number>();
    const delta = (key: string, total: number) => {
      const d = total - (seen.get(key) ?? 0);
      seen.set(key, Math.max(total, seen.get(key) ?? 0));
      return d;
    };
    new client.Counter({
      name: "revdial_tunnel_handshakes_refused_total",
      help: "Tunnel handshakes refused, by HTTP status (429: over the admission rate or the tunnel limit)",
      labelNames: ["status"],
      registers,
      collect() {
        for (const [status, total] of Object.entries(read().refused)) {
          const d = delta(`refused:${status}`, total);
          if (d > 0) this.inc({ status }, d);
        }
      },
    });
    new client.Counter({
      name: "revdial_tunnel_links_dropped_total",
      help: "Tunnel links dropped for want of HTTP/2, by reason (preface_timeout, dead_link)",
      labelNames: ["reason"],
      registers,
      collect() {
        const c = read();
        for (const [reason, total] of [
          ["preface_timeout", c.preface_timeouts],
          ["dead_link", c.dead_links],
        ] as const) {
          const d = delta(`dropped:${reason}`, total);
          if (d > 0) this.inc({ reason }, d);
        }
      },
    });
  }

  /** Adds a source of cumulative byte counts (the registry's closed + live tunnels). */
  addByteSource(source: () => { in: number; out: number }): void {
    this.#byteSources.push(source);
  }

  /**
   * A replica's metrics (src/api/cluster/): calls forwarded to or served for another replica, and
   * directory lookups on the call path by result (local, remote, grace: waited for a runner in
   * transit, miss), and whether this replica is the leader.
   */
  clusterObserver(): {
    forwarded(direction: "in" | "out"): void;
    lookup(result: "local" | "remote" | "grace" | "miss"): void;
    leader(leader: boolean): void;
    sweep(): void;
  } {
    const registers = [this.registry];
    const forwarded = new client.Counter({
      name: "revdial_cluster_forwarded_calls_total",
      help: "Calls forwarded to another replica (out) or served for one (in)",
      labelNames: ["direction"],
      registers,
    });
    const lookups = new client.Counter({
      name: "revdial_cluster_directory_lookups_total",
      help: "Tunnel directory lookups on the call path, by result (local, remote, grace, miss)",
      labelNames: ["result"],
      registers,
    });
    const leader = new client.Gauge({
      name: "revdial_cluster_leader",
      help: "1 while this replica is the cluster's leader (runs the background sweeps)",
      registers,
    });
    leader.set(0);
    const sweeps = new client.Counter({
      name: "revdial_cluster_directory_sweeps_total",
      help: "Directory clean-ups (lapsed entries removed) run by this replica as the leader",
      registers,
    });
    return {
      sweep: () => sweeps.inc(),
      forwarded: (direction) => forwarded.inc({ direction }),
      lookup: (result) => lookups.inc({ result }),
      leader: (is) => leader.set(is ? 1 : 0),
    };
  }

  observer(): RegistryObserver {
    return {
      registered: (_id, protocol, replaced) => {
        this.registrations.inc({ protocol });
        if (replaced) this.replacements.inc();
      },
      call: (outcome, seconds) => {
        this.calls.inc({ outcome });
        this.callSeconds.observe(seconds);
      },
      graceWait: (outcome) => this.graceWaits.inc({ outcome }),
    };
  }
}

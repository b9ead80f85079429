// What the dashboard shows live: the sessions, hosts and tunnels the key may see, loaded once and
// then kept current by the one event stream (GET /api/v1/events). Lists are never polled: after a
// reconnect they are loaded again, since events may have been missed meanwhile.

import { useEffect, useState } from "preact/hooks";
import { getJson, type HostView, type SessionView, type TunnelView } from "./api.ts";
import { openStream } from "./events.ts";

interface TunnelEvent {
  runner_id: string;
  state: "up" | "down";
  stats?: TunnelView;
  session_id?: string | null;
  owner?: string | null;
}

export type StreamState = "connecting" | "live" | "reconnecting";

export class LiveState {
  sessions = new Map<string, SessionView>();
  hosts = new Map<string, HostView>();
  tunnels = new Map<string, TunnelView>();
  stream: StreamState = "connecting";
  error: string | null = null;
  readonly #admin: boolean;
  readonly #listeners = new Set<() => void>();
  #close: (() => void) | null = null;

  constructor(admin: boolean) {
    this.#admin = admin;
  }

  start(): void {
    this.#close = openStream("/api/v1/events", {
      onOpen: () => void this.reload(),
      onState: (state) => {
        this.stream = state;
        this.#changed();
      },
      onEvent: (type, data) => this.#apply(type, data),
    });
  }

  stop(): void {
    this.#close?.();
  }

  async reload(): Promise<void> {
    try {
      const sessions = await getJson<SessionView[]>("/api/v1/sessions");
      this.sessions = new Map(sessions.map((s) => [s.id, s]));
      if (this.#admin) {
        const [hosts, tunnels] = await Promise.all([
          getJson<HostView[]>("/api/v1/wolf-instances"),
          getJson<TunnelView[]>("/api/v1/revdial/connections"),
        ]);
        this.hosts = new Map(hosts.map((h) => [h.id, h]));
        this.tunnels = new Map(tunnels.map((t) => [t.runner_id, t]));
      }
      this.error = null;
    } catch (err) {
      this.error = err instanceof Error ? err.message : String(err);
    }
    this.#changed();
  }

  /** A session the page just made (start, stop answer): shown at once, the stream confirms it. */
  putSession(session: SessionView): void {
    this.sessions.set(session.id, session);
    this.#changed();
  }

  subscribe(fn: () => void): () => void {
    this.#listeners.add(fn);
    return () => this.#listeners.delete(fn);
  }

  #apply(type: string, data: unknown): void {
    if (type === "session") {
      const s = data as SessionView;
      if (s.deleted) this.sessions.delete(s.id);
      else this.sessions.set(s.id, s);
    } else if (type === "host") {
      const h = data as HostView;
      if (h.deleted) this.hosts.delete(h.id);
      else this.hosts.set(h.id, h);
    } else if (type === "tunnel") {
      const t = data as TunnelEvent;
      if (t.state === "down") this.tunnels.delete(t.runner_id);
      else
        this.tunnels.set(t.runner_id, {
          ...t.stats,
          runner_id: t.runner_id,
          session_id: t.session_id,
          owner: t.owner,
        });
    } else return;
    this.#changed();
  }

  #changed(): void {
    for (const fn of this.#listeners) fn();
  }
}

/** Re-renders the calling component whenever the live state changes. */
export function useLive(live: LiveState): LiveState {
  const [, setTick] = useState(0);
  useEffect(() => live.subscribe(() => setTick((n) => n + 1)), [live]);
  return live;
}

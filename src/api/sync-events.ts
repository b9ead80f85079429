// The fan-out behind `GET /api/v1/sessions/{id}/events` (Server-Sent Events): every change of a
// session's conversation (an interaction's new state or text) and of its status or agent link is
// published here once and written to each open stream of that session.
//
// Resuming. Each event's id is `EPOCH.SEQ`: EPOCH names this log (random per process start), SEQ
// counts up per session. The last `ringSize` events of a session are kept, so a client that comes
// back with `Last-Event-ID` gets exactly the events after it. When the id is from another epoch (the
// API restarted) or older than the ring, the events in between are gone: the stream then starts
// with a `snapshot` (the caller writes every interaction's current state), so the client never ends
// up with a stale view, only with repeated ones.
//
// Bounds: ringSize events per session (default 256); sessions remembered at most maxSessions
// (default 10 000; the least recently published is forgotten, and its streams resume by snapshot);
// streams per session at most maxStreamsPerSession (default 16); a stream whose client does not
// read (more than maxBufferedBytes, default 1 MiB, waiting in its socket) is ended, and the client
// resumes from its last id.

import { randomBytes } from "node:crypto";
import { InvalidOptionError } from "../common/errors.ts";

export interface SyncEvent {
  id: string;
  /** `interaction` or `session`. */
  event: string;
  data: unknown;
}

/** Where a stream's events go (an HTTP response in production). */
export interface EventSink {
  /** Writes one event; returns false when the client is too slow and the stream must end. */
  write(event: SyncEvent): boolean;
  end(): void;
}

export interface SyncEventLogOptions {
  ringSize?: number;
  maxSessions?: number;
  maxStreamsPerSession?: number;
}

export const SYNC_EVENT_LOG_DEFAULTS = Object.freeze({
  ringSize: 256,
  maxSessions: 10_000,
  maxStreamsPerSession: 16,
});

interface SessionLog {
  seq: number;
  ring: SyncEvent[];
  sinks: Set<EventSink>;
}

/** Where a resuming stream starts: events to replay, or a snapshot first. */
export type Resume = { replay: SyncEvent[] } | { snapshot: true };

/**
 * Contracts: publish() hands an event to every stream of its session in publish order; a stream
 * added with attach() sees every event published after it (and the replay before it) exactly once.
 */
export class SyncEventLog {
  readonly #o: Required<SyncEventLogOptions>;
  readonly #epoch = randomBytes(4).toString("hex");
  /** session id -> its log; a Map keeps insertion order, which makes forgetting the oldest cheap. */
  readonly #sessions = new Map<string, SessionLog>();

  constructor(options: SyncEventLogOptions = {}) {
    const o = { ...SYNC_EVENT_LOG_DEFAULTS, ...options };
    for (const name of ["ringSize", "maxSessions", "maxStreamsPerSession"] as const)
      if (!Number.isInteger(o[name]) || o[name] < 1)
        throw new InvalidOptionError(name, "must be a positive integer");
    this.#o = o;
  }

  #log(sessionId: string): SessionLog {
    let log = this.#sessions.get(sessionId);
    if (log) {
      // Most recently used last, so the first entry is the one to forget.
      this.#sessions.delete(sessionId);
    } else {
      log = { seq: 0, ring: [], sinks: new Set() };
      if (this.#sessions.size >= this.#o.maxSessions) this.#forgetOldest();
    }
    this.#sessions.set(sessionId, log);
    return log;
  }

  #forgetOldest(): void {
    for (const [id, log] of this.#sessions) {
      for (const sink of log.sinks) sink.end();
      this.#sessions.delete(id);
      return;
    }
  }

  publish(sessionId: string, event: string, data: unknown): void {
    const log = this.#log(sessionId);
    log.seq++;
    const entry: SyncEvent = { id: `${this.#epoch}.${log.seq}`, event, data };
    log.ring.push(entry);
    if (log.ring.length > this.#o.ringSize) log.ring.shift();
    for (const sink of log.sinks) {
      if (!sink.write(entry)) this.detach(sessionId, sink);
    }
  }

  /** True when the session has room for one more stream. */
  hasRoom(sessionId: string): boolean {
    return (this.#sessions.get(sessionId)?.sinks.size ?? 0) < this.#o.maxStreamsPerSession;
  }

  /**
   * Adds a stream and says where it starts. `lastEventId` null: live events only. A known id in the
   * ring: the events after it. Anything else: a snapshot first, then live events.
   */
  attach(sessionId: string, sink: EventSink, lastEventId: string | null): Resume {
    const log = this.#log(sessionId);
    log.sinks.add(sink);
    if (lastEventId === null) return { replay: [] };
    const [epoch, seqText] = lastEventId.split(".");
    const seq = Number(seqText);
    if (epoch !== this.#epoch || !Number.isInteger(seq) || seq > log.seq) return { snapshot: true };
    if (seq === log.seq) return { replay: [] };
    const first = log.ring[0];
    const firstSeq = first ? Number(first.id.split(".")[1]) : log.seq + 1;
    if (seq + 1 < firstSeq) return { snapshot: true };
    return { replay: log.ring.filter((e) => Number(e.id.split(".")[1]) > seq) };
  }

  /** The id a snapshot stands at (the session's latest event), for the client to resume from. */
  currentId(sessionId: string): string {
    return `${this.#epoch}.${this.#log(sessionId).seq}`;
  }

  detach(sessionId: string, sink: EventSink): void {
    this.#sessions.get(sessionId)?.sinks.delete(sink);
  }

  /** Ends every stream (server shutdown); idempotent. */
  close(): void {
    for (const log of this.#sessions.values()) {
      for (const sink of log.sinks) sink.end();
      log.sinks.clear();
    }
  }
}

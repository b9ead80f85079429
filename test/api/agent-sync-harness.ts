// Helpers for the agent sync tests: a sync socket client that records what it receives, an SSE
// reader over a real HTTP response, and a few waits. Everything talks to a real server over
// 127.0.0.1; nothing here stands in for the code under test.

import { once } from "node:events";
import WebSocket from "ws";
import { SYNC_PATH } from "../../src/common/agent-sync-wire.ts";

export interface Received {
  type: string;
  data: { content?: string; interaction_id?: string | null };
}

/** A sync socket as an agent opens it, with everything it received. */
export class SyncClient {
  readonly ws: WebSocket;
  readonly received: Received[] = [];
  closed: { code: number; reason: string } | null = null;
  readonly #closedPromise: Promise<{ code: number; reason: string }>;
  readonly #waiters = new Set<() => void>();

  private constructor(ws: WebSocket) {
    this.ws = ws;
    ws.on("message", (data) => {
      this.received.push(JSON.parse(data.toString()) as Received);
      for (const w of this.#waiters) w();
    });
    this.#closedPromise = new Promise((resolve) => {
      ws.once("close", (code, reason) => {
        this.closed = { code, reason: reason.toString() };
        for (const w of this.#waiters) w();
        resolve(this.closed);
      });
    });
    ws.on("error", () => {});
  }

  /** Opens the socket; resolves once open, or rejects with the handshake's status and body. */
  static async open(url: string, sessionId: string, key: string): Promise<SyncClient> {
    const ws = new WebSocket(`${url.replace(/^http/, "ws")}${SYNC_PATH}?session_id=${sessionId}`, {
      headers: { authorization: `Bearer ${key}` },
    });
    const client = new SyncClient(ws);
    await new Promise<void>((resolve, reject) => {
      ws.once("open", () => resolve());
      ws.once("unexpected-response", (_req, res) => {
        let body = "";
        res.on("data", (c: Buffer) => {
          body += c.toString();
        });
        res.on("end", () => reject(new HandshakeRefused(res.statusCode ?? 0, body)));
      });
      ws.once("error", reject);
    });
    return client;
  }

  event(event_type: string, data: Record<string, unknown>, sessionId: string): void {
    this.ws.send(
      JSON.stringify({ session_id: sessionId, event_type, data, timestamp: new Date().toISOString() }),
    );
  }

  /** Resolves once `count` messages arrived (or rejects when the socket closes first). */
  async waitFor(count: number, timeoutMs = 10_000): Promise<Received[]> {
    await this.#until(() => this.received.length >= count, `${count} messages`, timeoutMs);
    return this.received.slice(0, count);
  }

  waitClosed(): Promise<{ code: number; reason: string }> {
    return this.#closedPromise;
  }

  #until(check: () => boolean, what: string, timeoutMs: number): Promise<void> {
    if (check()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => done(new Error(`timed out waiting for ${what}`)), timeoutMs);
      const waiter = () => {
        if (check()) done();
        else if (this.closed) done(new Error(`socket closed (${this.closed.code}) before ${what}`));
      };
      const done = (err?: Error) => {
        clearTimeout(timer);
        this.#waiters.delete(waiter);
        if (err) reject(err);
        else resolve();
      };
      this.#waiters.add(waiter);
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.ws.close();
    await this.#closedPromise;
  }
}

export class HandshakeRefused extends Error {
  readonly status: number;
  readonly body: string;
  constructor(status: number, body: string) {
    super(`handshake refused with ${status}: ${body}`);
    this.status = status;
    this.body = body;
  }
  get code(): string | undefined {
    try {
      return (JSON.parse(this.body) as { error?: { code?: string } }).error?.code;
    } catch {
      return undefined;
    }
  }
}

export interface SseEvent {
  id: string | null;
  event: string;
  data: unknown;
}

/** An open event stream: parsed events as they come. */
export class SseReader {
  readonly events: SseEvent[] = [];
  readonly status: number;
  readonly #abort: AbortController;
  readonly #waiters = new Set<() => void>();
  #ended = false;

  private constructor(status: number, abort: AbortController) {
    this.status = status;
    this.#abort = abort;
  }

  static async open(url: string, key: string, lastEventId?: string): Promise<SseReader> {
    const abort = new AbortController();
    const headers: Record<string, string> = { authorization: `Bearer ${key}`, accept: "text/event-stream" };
    if (lastEventId) headers["last-event-id"] = lastEventId;
    const res = await fetch(url, { headers, signal: abort.signal });
    const reader = new SseReader(res.status, abort);
    if (res.ok && res.body) void reader.#pump(res.body);
    else await res.arrayBuffer();
    return reader;
  }

  async #pump(body: ReadableStream<Uint8Array>): Promise<void> {
    const decoder = new TextDecoder();
    let buffer = "";
    try {
      for await (const chunk of body) {
        buffer += decoder.decode(chunk, { stream: true });
        for (let cut = buffer.indexOf("\n\n"); cut >= 0; cut = buffer.indexOf("\n\n")) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const event = parseBlock(block);
          if (event) this.events.push(event);
        }
        for (const w of this.#waiters) w();
      }
    } catch {
      // Aborted by close().
    }
    this.#ended = true;
    for (const w of this.#waiters) w();
  }

  /** Resolves once `check` holds for the events so far. */
  until(check: (events: SseEvent[]) => boolean, what: string, timeoutMs = 10_000): Promise<void> {
    if (check(this.events)) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => done(new Error(`timed out waiting for ${what}`)), timeoutMs);
      const waiter = () => {
        if (check(this.events)) done();
        else if (this.#ended) done(new Error(`stream ended before ${what}`));
      };
      const done = (err?: Error) => {
        clearTimeout(timer);
        this.#waiters.delete(waiter);
        if (err) reject(err);
        else resolve();
      };
      this.#waiters.add(waiter);
    });
  }

  close(): void {
    this.#abort.abort();
  }
}

function parseBlock(block: string): SseEvent | null {
  let id: string | null = null;
  let event = "message";
  const data: string[] = [];
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "id") id = value;
    else if (field === "event") event = value;
    else if (field === "data") data.push(value);
  }
  if (data.length === 0) return null;
  return { id, event, data: JSON.parse(data.join("\n")) };
}

/** The interaction events of one interaction, in order. */
export function interactionEvents(events: SseEvent[], interactionId: string) {
  return events
    .filter((e) => e.event === "interaction")
    .map((e) => e.data as { id: string; response: string; state: string })
    .filter((d) => d.id === interactionId);
}

export async function waitOpen(ws: WebSocket): Promise<void> {
  if (ws.readyState === ws.OPEN) return;
  await once(ws, "open");
}

// Reads a Server-Sent Events stream with fetch(), so the key travels in the Authorization header
// (EventSource cannot set headers, and a key in a URL ends up in logs). Reconnects with backoff and
// jitter after a drop; onOpen runs at each (re)connect so the caller reloads what it may have missed.

import { call } from "./api.ts";

export interface StreamHandlers {
  onEvent(type: string, data: unknown): void;
  onOpen?(): void;
  onState?(state: "live" | "reconnecting"): void;
}

const MAX_BACKOFF_MS = 15_000;
/** A single event larger than this is a broken stream: drop it and reconnect. */
const MAX_EVENT_CHARS = 4 * 1024 * 1024;

function parseBlock(block: string, handlers: StreamHandlers): void {
  let type = "message";
  const data: string[] = [];
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") type = value;
    else if (field === "data") data.push(value);
  }
  if (data.length === 0) return;
  try {
    handlers.onEvent(type, JSON.parse(data.join("\n")));
  } catch {
    // not JSON: not one of ours
  }
}

async function readOnce(path: string, handlers: StreamHandlers, signal: AbortSignal): Promise<void> {
  const res = await call(path, { signal, headers: { accept: "text/event-stream" } });
  if (!res.body) return;
  handlers.onState?.("live");
  handlers.onOpen?.();
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end = buffer.indexOf("\n\n");
    while (end >= 0) {
      parseBlock(buffer.slice(0, end), handlers);
      buffer = buffer.slice(end + 2);
      end = buffer.indexOf("\n\n");
    }
    if (buffer.length > MAX_EVENT_CHARS) throw new Error("event too large");
  }
}

/** Opens the stream and keeps it open until the returned function is called. */
export function openStream(path: string, handlers: StreamHandlers): () => void {
  const abort = new AbortController();
  void (async () => {
    let backoff = 500;
    while (!abort.signal.aborted) {
      const started = Date.now();
      try {
        await readOnce(path, handlers, abort.signal);
      } catch (err) {
        const status = (err as { status?: number }).status;
        if (status === 401 || status === 403 || status === 404) return; // retrying will not help
      }
      if (abort.signal.aborted) return;
      handlers.onState?.("reconnecting");
      if (Date.now() - started > 10_000) backoff = 500;
      const wait = backoff / 2 + Math.random() * backoff;
      backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
      await new Promise((r) => setTimeout(r, wait));
    }
  })();
  return () => abort.abort();
}

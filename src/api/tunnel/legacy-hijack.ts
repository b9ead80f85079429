// The seed's other v1 control connection: a plain GET on the tunnel endpoint, answered 200, after
// which the socket itself carries the control lines both ways (the seed's Go client did this from
// its "use HTTP hijacking" change until it went back to WebSocket; PROTOCOL.md v1, CONTROL).
//
// Which plain GETs are that, and which are WebSocket or raw handshakes that a proxy stripped of
// their Upgrade header (and get 426 RD_ERR_TUNNEL_UPGRADE_STRIPPED so the agent's log says why):
// the Go client sends `Connection: Upgrade` with NO `Upgrade` header and no `Sec-WebSocket-*` header
// (`httpReq.Header.Set("Connection", "Upgrade")`, then `httpReq.Write(conn)`). A proxy that strips
// the upgrade drops `Upgrade` and `Connection` together (both are hop-by-hop; nginx sends
// `Connection: close` upstream) and passes the `Sec-WebSocket-*` headers through. So a GET is a
// hijacked control connection when, and only when:
//   - its `Connection` header lists `upgrade`, and
//   - it has no `Upgrade` header, no `Sec-WebSocket-Key`, `-Version` or `-Protocol`, and
//   - no header names the v2 link (`revdial.h2` anywhere in `Connection`), and
//   - it is not a data connection (`revdial.dialer`: those are WebSocket only).
// Everything else on the tunnel path stays the 426.
//
// Node's HTTP server has no hijack: the socket keeps its parser, which would read the agent's next
// line as a new request. hijackSocket() takes the socket off the server the way Node's own upgrade
// path does (lib/_http_server.js, onParserExecuteCommon): the server's listeners off, the parser
// unconsumed and freed, the response detached. test/tunnel/legacy-hijack.test.ts pins it on the
// Node version in use.

import type { IncomingMessage, ServerResponse } from "node:http";
import { createRequire } from "node:module";
import type { Socket } from "node:net";
import { SUBPROTOCOL_H2 } from "../../tunnel/constants.ts";
import { connectionTokens } from "../../tunnel/headers.ts";

/**
 * How long after the 200 the first dial may go out. The Go client reads the 200 through a buffered
 * reader and then reads the control lines from the raw socket: whatever arrived together with the
 * 200 sits in that buffer and is never read. The opening keep-alive goes out at once (losing it
 * costs nothing); conn-ready lines wait this long, which covers the client's wake-up after the 200.
 */
export const HIJACK_SETTLE_MS = 100;

/** Server listeners Node's HTTP server puts on a connection (lib/_http_server.js). */
const SERVER_LISTENERS: Readonly<Record<string, readonly string[]>> = Object.freeze({
  data: ["bound socketOnData"],
  end: ["bound socketOnEnd"],
  close: ["bound socketOnClose"],
  drain: ["bound socketOnDrain"],
  error: ["socketOnError"],
  timeout: ["socketOnTimeout"],
  pause: ["onSocketPause"],
  resume: ["onSocketResume"],
});

type FreeParser = (parser: unknown, req: unknown, socket: unknown) => void;

const freeParser: FreeParser | null = (() => {
  try {
    return (createRequire(import.meta.url)("_http_common") as { freeParser?: FreeParser }).freeParser ?? null;
  } catch {
    return null;
  }
})();

/** True when this plain (non-upgraded) GET on the tunnel path is the Go client's hijack request. */
export function isHijackRequest(req: IncomingMessage): boolean {
  const h = req.headers;
  if (req.method !== "GET") return false;
  if (h.upgrade !== undefined) return false;
  if (
    h["sec-websocket-key"] !== undefined ||
    h["sec-websocket-version"] !== undefined ||
    h["sec-websocket-protocol"] !== undefined
  )
    return false;
  const tokens = connectionTokens(h.connection);
  if (!tokens.has("upgrade") || tokens.has(SUBPROTOCOL_H2)) return false;
  return !new URL(req.url ?? "/", "http://x").searchParams.has("revdial.dialer");
}

/**
 * Takes the request's socket away from Node's HTTP server: from here on its bytes reach only the
 * caller. Returns null (and leaves the socket alone) when this Node's server is not shaped as
 * expected. Call before anything is written for the request.
 */
export function hijackSocket(req: IncomingMessage, res: ServerResponse): Socket | null {
  const socket = req.socket as Socket & { parser?: unknown };
  const parser = socket.parser;
  if (!freeParser || !parser) return null;
  for (const [event, names] of Object.entries(SERVER_LISTENERS)) {
    for (const listener of socket.listeners(event)) {
      if (names.includes((listener as { name?: string }).name ?? ""))
        socket.removeListener(event, listener as (...args: unknown[]) => void);
    }
  }
  freeParser(parser, req, socket);
  res.detachSocket(socket);
  socket.setTimeout(0);
  return socket;
}

/**
 * The answer before the control lines: 200 with no length, because what follows is a body that runs
 * until the connection ends. (The seed's server sent `Transfer-Encoding: chunked`, Go's default, and
 * then unchunked bytes; the Go client reads only the status, so either works for it.)
 */
export function hijackAnswer(now: Date): string {
  return `HTTP/1.1 200 OK\r\nDate: ${now.toUTCString()}\r\nCache-Control: no-store\r\n\r\n`;
}

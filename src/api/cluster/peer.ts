// Replica-to-replica calls (docs/replicas.md, "The peer link"): one connection per peer (TCP for an
// http:// advertise URL, TLS for https://), authenticated once with the shared peer secret, then
// protocol v3's multiplexer (../../tunnel/mux-session.ts) on it: the calling replica opens one
// stream per forwarded call.
//
// Why the multiplexer and not HTTP/2: the hop should cost what moving bytes costs. A forwarded
// call's stream carries the call itself as HTTP/1.1 bytes. The calling replica runs the same lean
// HTTP client as for a tunnel of its own (../tunnel/mux-http-client.ts, http1-exchange.ts); the
// replica that holds the tunnel parses nothing: it takes a connection to the target from its
// tunnel's pool and splices the two streams, byte for byte, credit for credit. Only a tunnel of an
// older protocol (v2, v1), whose agent cannot carry HTTP/1.1 on a pooled stream, has the holder
// read the call (node:http over the stream) and make it through its registry.
//
// Contracts:
// - Handshake: the caller sends `REVDIAL-PEER/2 {"replica","secret"}\n`; the peer answers
//   `REVDIAL-PEER/2 {"ok":true,"replica"}\n` and both start v3 (HELLO first), or answers
//   `{"ok":false,"status","code","message"}` and closes: no secret 401 RD_ERR_PEER_AUTH_REQUIRED,
//   a wrong one 403 RD_ERR_PEER_AUTH_FAILED (compared as SHA-256 digests, in constant time).
//   Nothing reaches a tunnel before that. An HTTP/2 preface (a replica of an older version) is told
//   so, and logged.
// - A stream's OPEN payload is JSON: {"op":"call","runner","target","fresh"}, {"op":"open",
//   "runner","target"}, {"op":"tunnels"}, {"op":"evict","runner","reason"} or {"op":"evict-owner",
//   "owner","reason"} (the tunnels a revoked key registered). The peer serves it from
//   its LOCAL registry only, never forwarding again (the loop guard): a call crosses at most one
//   hop. It answers OPENED (for a call: JSON {"host","reused","mode"}), or a RESET before OPENED:
//   REFUSED / UNREACHABLE for a target the agent refused (the caller answers 403 / 502, as for a
//   tunnel of its own), INTERNAL with JSON {"status","code","message","retryAfter"} for the API's
//   own error (RD_ERR_PEER_NOT_HELD when the runner is not, or no longer, here: the caller waits
//   for the directory to say where it went).
// - A call's caller may send the request right after OPEN (it does when it knows the target's Host
//   and can send the body again). It ends its half (FIN) only once the answer is complete and the
//   connection is fit for another call: the peer then gives its tunnel's connection back to the
//   pool. A RESET either way cuts both streams, so the agent cuts the target's socket.

import { createHash, timingSafeEqual } from "node:crypto";
import http, { type IncomingMessage, type ServerResponse } from "node:http";
import net, { type AddressInfo, type Socket } from "node:net";
import { type Duplex, Readable } from "node:stream";
import tls from "node:tls";
import type { Logger } from "../../common/logger.ts";
import { DEFAULT_TARGET } from "../../tunnel/constants.ts";
import { TunnelClosedError, TunnelStreamError } from "../../tunnel/errors.ts";
import { MUX_CODE } from "../../tunnel/mux-frames.ts";
import { RawMuxLink } from "../../tunnel/mux-link.ts";
import { LINK_LOST, MuxSession, type MuxStream } from "../../tunnel/mux-session.ts";
import type { OpenOptions, TunnelRequest, TunnelResponse, TunnelStats } from "../../tunnel/types.ts";
import { ApiError, errorBody, retryAfterOf, statusOf } from "../http-errors.ts";
import { Http1Exchange, StaleConnectionError } from "../tunnel/http1-exchange.ts";
import { type Pending, refusalAnswer, streamDuplex, withDeadline } from "../tunnel/mux-http-client.ts";
import { MuxTunnel } from "../tunnel/mux-tunnel.ts";
import type { TunnelRegistry } from "../tunnel/tunnel-registry.ts";

/** The handshake's first word, both ways. */
export const PEER_PROTOCOL = "REVDIAL-PEER/2";
/** The longest handshake line read. */
const MAX_HANDSHAKE = 4096;
const HANDSHAKE_TIMEOUT_MS = 5000;
/** Peer links ping this often, and one silent for PEER_DEAD_MS is cut. */
const PEER_PING_MS = 5000;
const PEER_DEAD_MS = 15_000;
/** An API error carried on a RESET (before OPENED) or, in http mode, in this answer header. */
const ERROR_HEADER = "revdial-error";

/** The peer does not hold the runner's tunnel (it moved, or is reconnecting). */
export class PeerNotHeldError extends ApiError {
  constructor(message: string) {
    super(503, "RD_ERR_PEER_NOT_HELD", message, { retryAfterSeconds: 1 });
  }
}

/** The peer could not be reached (dead, or its link broke before an answer). */
export class PeerUnreachableError extends ApiError {
  constructor(replicaId: string, cause?: unknown) {
    super(503, "RD_ERR_PEER_UNREACHABLE", `replica ${replicaId} is unreachable`, {
      cause,
      retryAfterSeconds: 1,
    });
  }
}

/** The agent refused or could not reach the target (a 403 / 502 answer, as for a local tunnel). */
class TargetRefusal extends Error {
  readonly status: number;
  constructor(status: number, message: string) {
    super(message);
    this.status = status;
  }
}

function digest(text: string): Buffer {
  return createHash("sha256").update(text).digest();
}

/** The JSON an API error travels as, on a RESET or in an answer header. */
function encodeError(err: unknown): string {
  const { code, message } = errorBody(err).error;
  const status = statusOf(err);
  return JSON.stringify({
    status: status >= 400 && status < 600 ? status : 500,
    code,
    message,
    retryAfter: retryAfterOf(err) ?? null,
  });
}

function decodeError(text: string, replicaId: string): ApiError {
  let parsed: { status?: number; code?: string; message?: string; retryAfter?: number | null } = {};
  try {
    parsed = JSON.parse(text);
  } catch {}
  const code = parsed.code ?? "RD_ERR_PEER_FAILED";
  const message = parsed.message ?? (text || `replica ${replicaId} failed the call`);
  if (code === "RD_ERR_PEER_NOT_HELD") return new PeerNotHeldError(message);
  return new ApiError(parsed.status || 502, code, message, {
    retryAfterSeconds: parsed.retryAfter ?? undefined,
  });
}

/**
 * What a peer stream's reset (or the link's loss) means to the calling replica. `refusals`: a call
 * answers a target the agent refused or could not reach as a local tunnel does (TargetRefusal).
 */
function streamFailure(
  code: number,
  message: string,
  replicaId: string,
  runnerId: string,
  refusals: boolean,
): Error {
  if (code === LINK_LOST) return new PeerUnreachableError(replicaId, new Error(message || "link lost"));
  if (refusals && code === MUX_CODE.REFUSED) return new TargetRefusal(403, message);
  if (refusals && code === MUX_CODE.UNREACHABLE) return new TargetRefusal(502, message);
  if (code === MUX_CODE.INTERNAL && message.startsWith("{")) return decodeError(message, replicaId);
  return new TunnelStreamError(runnerId, message || `stream reset by replica ${replicaId} (code ${code})`);
}

/** Reads one handshake line; the bytes after it stay with the socket. */
function readLine(socket: Socket, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    let buf: Buffer = Buffer.alloc(0);
    const done = (err: Error | null, line?: string) => {
      clearTimeout(timer);
      socket.off("data", onData);
      socket.off("error", onError);
      socket.off("close", onClose);
      if (err) reject(err);
      else resolve(line as string);
    };
    const onData = (chunk: Buffer) => {
      buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
      const nl = buf.indexOf(10);
      if (nl < 0) {
        if (buf.length > MAX_HANDSHAKE) done(new Error("handshake line too long"));
        else if (buf.subarray(0, 3).toString("latin1") === "PRI") done(null, buf.toString("latin1"));
        return;
      }
      socket.pause();
      const rest = buf.subarray(nl + 1);
      if (rest.length > 0) socket.unshift(rest);
      done(null, buf.subarray(0, nl).toString("utf8").replace(/\r$/, ""));
    };
    const onError = (err: Error) => done(err);
    const onClose = () => done(new Error("connection closed during the handshake"));
    const timer = setTimeout(() => done(new Error("no handshake in time")), timeoutMs);
    socket.on("data", onData);
    socket.once("error", onError);
    socket.once("close", onClose);
  });
}

interface CallOp {
  op: "call" | "open";
  runner: string;
  target?: string;
  fresh?: boolean;
}

export interface PeerServerOptions {
  replicaId: string;
  secret: string;
  registry: TunnelRegistry;
  logger: Logger;
  /** TLS for an https:// advertise URL. */
  tls?: { key: Buffer; cert: Buffer } | null;
  /** Counts a call served for another replica. */
  onForwardedIn?: () => void;
  /** False while this replica drains: its tunnels take no new call (the caller waits for the move). */
  serving?: () => boolean;
}

/** The peer endpoint: serves forwarded calls from the local registry. */
export class PeerServer {
  readonly #o: PeerServerOptions;
  readonly #secret: Buffer;
  readonly #server: net.Server;
  readonly #sockets = new Set<Socket>();
  readonly #sessions = new Set<MuxSession>();
  /** Serves calls for tunnels of older protocols, read from the stream (http mode). */
  readonly #http: http.Server;
  /** The call each http-mode stream (the socket node:http reads) was opened for. */
  readonly #httpCalls = new WeakMap<object, CallOp>();

  constructor(options: PeerServerOptions) {
    this.#o = options;
    this.#secret = digest(options.secret);
    this.#server = options.tls
      ? tls.createServer({ key: options.tls.key, cert: options.tls.cert }, (s) => void this.#accept(s))
      : net.createServer((s) => void this.#accept(s));
    this.#server.on("tlsClientError", () => {});
    this.#http = http.createServer({ keepAliveTimeout: 0 }, (req, res) => void this.#serveHttp(req, res));
  }

  async listen(host: string, port: number): Promise<number> {
    await new Promise<void>((resolve, reject) => {
      this.#server.once("error", reject);
      this.#server.listen(port, host, () => {
        this.#server.off("error", reject);
        resolve();
      });
    });
    return (this.#server.address() as AddressInfo).port;
  }

  async #accept(socket: Socket): Promise<void> {
    this.#sockets.add(socket);
    socket.once("close", () => this.#sockets.delete(socket));
    socket.on("error", () => {});
    socket.setNoDelay(true);
    const refuse = (status: number, code: string, message: string) => {
      socket.end(`${PEER_PROTOCOL} ${JSON.stringify({ ok: false, status, code, message })}\n`);
      setTimeout(() => socket.destroy(), 1000).unref();
    };
    let line: string;
    try {
      line = await readLine(socket, HANDSHAKE_TIMEOUT_MS);
    } catch {
      socket.destroy();
      return;
    }
    if (line.startsWith("PRI")) {
      this.#o.logger.warn(
        { remote_address: socket.remoteAddress },
        "a replica speaking the older HTTP/2 peer protocol connected: every replica must run the same revdial version",
      );
      return refuse(
        426,
        "RD_ERR_PEER_PROTOCOL",
        `this replica speaks ${PEER_PROTOCOL}; upgrade every replica`,
      );
    }
    if (!line.startsWith(`${PEER_PROTOCOL} `))
      return refuse(400, "RD_ERR_PEER_PROTOCOL", `expected a ${PEER_PROTOCOL} handshake`);
    let hello: { replica?: unknown; secret?: unknown } = {};
    try {
      hello = JSON.parse(line.slice(PEER_PROTOCOL.length + 1));
    } catch {}
    if (typeof hello.secret !== "string")
      return refuse(401, "RD_ERR_PEER_AUTH_REQUIRED", "peer secret required");
    if (!timingSafeEqual(digest(hello.secret), this.#secret))
      return refuse(403, "RD_ERR_PEER_AUTH_FAILED", "wrong peer secret");
    const from = typeof hello.replica === "string" ? hello.replica.slice(0, 120) : "?";
    socket.write(`${PEER_PROTOCOL} ${JSON.stringify({ ok: true, replica: this.#o.replicaId })}\n`);
    socket.setKeepAlive(true, 10_000);
    const link = new RawMuxLink(socket);
    const session: MuxSession = new MuxSession({
      link,
      role: "agent",
      onOpen: (stream, payload) => this.#onOpen(session, stream, payload, from),
      onProtocolError: (message) =>
        this.#o.logger.warn({ peer: from, err: message }, "peer link protocol error"),
    });
    this.#sessions.add(session);
    link.onClose(() => this.#sessions.delete(session));
    socket.resume();
  }

  #onOpen(session: MuxSession, stream: MuxStream, payload: string, from: string): undefined {
    let op: {
      op?: string;
      runner?: unknown;
      target?: unknown;
      fresh?: unknown;
      reason?: unknown;
      owner?: unknown;
    };
    try {
      op = JSON.parse(payload);
    } catch {
      return fail(stream, new ApiError(400, "RD_ERR_PEER_PROTOCOL", "OPEN is not JSON"));
    }
    const runnerId = typeof op.runner === "string" ? op.runner : "";
    if (op.op === "tunnels") return reply(session, stream, this.#o.registry.list());
    if (op.op === "evict") {
      const reason = typeof op.reason === "string" ? op.reason : "evicted";
      return reply(session, stream, { evicted: this.#o.registry.evict(runnerId, reason) });
    }
    if (op.op === "evict-owner") {
      const reason = typeof op.reason === "string" ? op.reason : "credential revoked";
      const owner = typeof op.owner === "string" ? op.owner : "";
      return reply(session, stream, {
        evicted: owner ? this.#o.registry.evictOwned(owner, reason).length : 0,
      });
    }
    if (op.op !== "call" && op.op !== "open")
      return fail(stream, new ApiError(404, "RD_ERR_NOT_FOUND", `no peer operation ${String(op.op)}`));
    if (this.#o.serving && !this.#o.serving())
      return fail(
        stream,
        new PeerNotHeldError(
          `replica ${this.#o.replicaId} is draining; ${runnerId} is moving to another replica`,
        ),
      );
    const tunnel = this.#o.registry.get(runnerId);
    if (!tunnel || !this.#o.registry.isConnected(runnerId))
      return fail(
        stream,
        new PeerNotHeldError(
          `${runnerId} is not connected to replica ${this.#o.replicaId} either (forwarded from ${from}; a forwarded call is not forwarded again)`,
        ),
      );
    this.#o.onForwardedIn?.();
    const call: CallOp = {
      op: op.op,
      runner: runnerId,
      target: typeof op.target === "string" && op.target ? op.target : DEFAULT_TARGET,
      fresh: op.fresh === true,
    };
    if (call.op === "call" && tunnel instanceof MuxTunnel) this.#splice(session, stream, tunnel, call);
    else if (call.op === "call") this.#viaHttp(session, stream, call);
    else void this.#open(session, stream, call);
  }

  /**
   * A call to a v3 tunnel: a connection from its pool, spliced to the caller's stream. The caller's
   * bytes that came before the connection wait for it.
   */
  #splice(session: MuxSession, peer: MuxStream, tunnel: MuxTunnel, call: CallOp): void {
    const target = call.target as string;
    const early: Buffer[] = [];
    let earlyEnd = false;
    let pending: Pending | null = null;
    peer.onData = (chunk) => early.push(chunk);
    peer.onEnd = () => {
      earlyEnd = true;
    };
    peer.onReset = () => pending?.cancel(new Error("the calling replica gave up"));
    tunnel
      .acquire(target, (p) => (pending = p), call.fresh === true)
      .then(
        (conn) => {
          if ("refused" in conn)
            return peer.reset(conn.refused === 403 ? MUX_CODE.REFUSED : MUX_CODE.UNREACHABLE, conn.message);
          if (peer.closed) {
            // The caller went away before a byte was written: the connection is as good as new.
            tunnel.release(target, conn.stream, conn.host);
            return;
          }
          session.opened(peer, JSON.stringify({ host: conn.host, reused: conn.reused, mode: "splice" }));
          pipeStreams(peer, conn.stream, {
            early,
            earlyEnd,
            // The caller ended its half: its exchange is complete and the connection fit for another.
            done: () => tunnel.release(target, conn.stream, conn.host),
          });
        },
        (err: Error) => fail(peer, err),
      );
  }

  /** A call to a tunnel of an older protocol: node:http reads it from the stream, the registry makes it. */
  #viaHttp(session: MuxSession, peer: MuxStream, call: CallOp): void {
    session.opened(peer, JSON.stringify({ host: "localhost", reused: false, mode: "http" }));
    const socket = streamDuplex(
      peer,
      (code, message) => new TunnelStreamError(call.runner, message || `${code}`),
    );
    this.#httpCalls.set(socket, call);
    socket.on("error", () => {});
    this.#http.emit("connection", socket);
  }

  async #serveHttp(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const call = this.#httpCalls.get(req.socket);
    if (!call) return void res.destroy();
    const abort = new AbortController();
    res.once("close", () => {
      if (!res.writableFinished) abort.abort(new Error("the calling replica gave up"));
    });
    const hasBody =
      req.headers["content-length"] !== undefined || req.headers["transfer-encoding"] !== undefined;
    const headers: Record<string, string | string[]> = {};
    for (const [k, v] of Object.entries(req.headers)) if (v !== undefined) headers[k] = v;
    try {
      const answer = await this.#o.registry.request(call.runner, {
        method: req.method ?? "GET",
        path: req.url ?? "/",
        headers,
        body: hasBody ? req : null,
        target: call.target,
        signal: abort.signal,
      });
      if (res.destroyed) return void answer.body.destroy();
      res.writeHead(answer.status, answer.headers);
      if (answer.whole) return void res.end(answer.whole);
      answer.body.once("error", () => res.destroy());
      answer.body.pipe(res);
    } catch (err) {
      if (res.headersSent) return void res.destroy();
      const body = encodeError(err);
      res.writeHead(statusOf(err), {
        "content-type": "application/json",
        "content-length": Buffer.byteLength(body),
        [ERROR_HEADER]: body,
      });
      res.end(body);
    }
  }

  async #open(session: MuxSession, peer: MuxStream, call: CallOp): Promise<void> {
    const abort = new AbortController();
    peer.onReset = () => abort.abort(new Error("the calling replica gave up"));
    try {
      const inner = await this.#o.registry.open(call.runner, call.target as string, { signal: abort.signal });
      if (peer.closed) return void inner.destroy();
      session.opened(peer, "{}");
      const outer = streamDuplex(
        peer,
        (code, message) => new TunnelStreamError(call.runner, message || `${code}`),
      );
      outer.on("error", () => inner.destroy());
      inner.on("error", () => outer.destroy());
      outer.pipe(inner);
      inner.pipe(outer);
    } catch (err) {
      fail(peer, err);
    }
  }

  async close(): Promise<void> {
    for (const s of this.#sessions) s.goaway(MUX_CODE.NONE, "replica shutting down");
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  destroy(): void {
    for (const s of this.#sessions) s.destroy("replica shutting down");
    for (const s of this.#sockets) s.destroy();
    this.#server.close();
  }
}

/**
 * The peer's OPENED for a stream the caller opened: its info. Rejects with `failure` of a RESET
 * first, or with what `track`'s cancel is given (the call's deadline or abort), resetting it.
 */
function opened(
  stream: MuxStream,
  track: (p: Pending) => void,
  failure: (code: number, message: string) => Error,
): Promise<string> {
  return new Promise<string>((resolve, reject) => {
    track({
      cancel: (err) => {
        stream.reset(MUX_CODE.CANCEL, "");
        reject(err);
      },
    });
    stream.onOpened = resolve;
    stream.onReset = (code, message) => reject(failure(code, message));
  });
}

/** A stream refused before OPENED with the API's error. */
function fail(stream: MuxStream, err: unknown): undefined {
  if (!stream.closed) stream.reset(MUX_CODE.INTERNAL, encodeError(err));
}

/** A small JSON answer on its own stream. */
function reply(session: MuxSession, stream: MuxStream, value: unknown): undefined {
  stream.onData = (chunk) => stream.consumed(chunk.length);
  session.opened(stream, "{}");
  stream.write(Buffer.from(JSON.stringify(value)));
  stream.end();
}

/**
 * Splices two streams: bytes both ways, each side's credit given back only once the other has
 * taken the bytes on. The caller's FIN is `done` (its exchange is complete; `inner` is handed back
 * untouched); the inner side's FIN is passed on; a RESET either way cuts both.
 */
function pipeStreams(
  outer: MuxStream,
  inner: MuxStream,
  o: { early: Buffer[]; earlyEnd: boolean; done: () => void },
): void {
  let heldOuter = 0;
  let heldInner = 0;
  let finished = false;
  const toInner = (chunk: Buffer) => {
    if (inner.write(chunk)) outer.consumed(chunk.length);
    else heldOuter += chunk.length;
  };
  const callerDone = () => {
    if (finished) return;
    finished = true;
    if (inner.closed || inner.remoteEnded || heldOuter > 0) inner.reset(MUX_CODE.CANCEL, "");
    else {
      if (heldInner > 0) inner.consumed(heldInner);
      o.done();
    }
    outer.end();
  };
  outer.onData = toInner;
  outer.onEnd = callerDone;
  outer.onReset = () => {
    finished = true;
    inner.reset(MUX_CODE.CANCEL, "");
  };
  outer.onDrain = () => {
    if (heldInner === 0) return;
    const n = heldInner;
    heldInner = 0;
    inner.consumed(n);
  };
  inner.onData = (chunk) => {
    if (outer.write(chunk)) inner.consumed(chunk.length);
    else heldInner += chunk.length;
  };
  inner.onDrain = () => {
    if (heldOuter === 0) return;
    const n = heldOuter;
    heldOuter = 0;
    outer.consumed(n);
  };
  inner.onEnd = () => outer.end();
  inner.onReset = (code, message) => {
    if (finished) return;
    finished = true;
    // The link to the agent went away: a wire code for it, and the error the caller should see.
    if (code === LINK_LOST) outer.reset(MUX_CODE.INTERNAL, encodeError(new TunnelClosedError("", message)));
    else outer.reset(code, message);
  };
  for (const chunk of o.early) toInner(chunk);
  if (o.earlyEnd) callerDone();
}

export interface PeerPoolOptions {
  replicaId: string;
  secret: string;
  logger: Logger;
  /** Extra CA for https:// peers (the replicas' own certificate, typically). */
  ca?: Buffer | null;
  /** Deadline to connect to a peer. Default 2 s. */
  connectTimeoutMs?: number;
  /** Counts a call sent to another replica. */
  onForwardedOut?: () => void;
}

/** One authenticated link to a peer, with its v3 session. */
interface PeerLink {
  session: MuxSession;
  /** Host values the peer's agents gave, per runner and target: a call that knows it sends at once. */
  hosts: Map<string, string>;
  closed: boolean;
}

/** The calling side: one pooled link per peer URL. */
export class PeerPool {
  readonly #o: PeerPoolOptions;
  readonly #links = new Map<string, Promise<PeerLink>>();
  #closed = false;

  constructor(options: PeerPoolOptions) {
    this.#o = options;
  }

  /** The link to `url`, connected and authenticated (PeerUnreachableError when it cannot be). */
  #link(url: string, replicaId: string): Promise<PeerLink> {
    if (this.#closed) return Promise.reject(new PeerUnreachableError(replicaId, new Error("closing")));
    const existing = this.#links.get(url);
    if (existing) return existing;
    const made = this.#connect(url, replicaId);
    this.#links.set(url, made);
    made.then(
      (link) => {
        if (link.closed && this.#links.get(url) === made) this.#links.delete(url);
      },
      () => {
        if (this.#links.get(url) === made) this.#links.delete(url);
      },
    );
    return made.then((link) => {
      if (link.closed) throw new PeerUnreachableError(replicaId, new Error("link closed"));
      return link;
    });
  }

  async #connect(url: string, replicaId: string): Promise<PeerLink> {
    const u = new URL(url);
    const secure = u.protocol === "https:";
    const port = Number(u.port) || (secure ? 443 : 80);
    const host = u.hostname.replace(/^\[|\]$/g, "");
    const socket: Socket = secure
      ? tls.connect({
          host,
          port,
          servername: net.isIP(host) ? undefined : host,
          ...(this.#o.ca ? { ca: [...tls.rootCertificates, this.#o.ca.toString()] } : {}),
        })
      : net.connect(port, host);
    socket.setNoDelay(true);
    const timer = setTimeout(
      () => socket.destroy(new Error("connect timeout")),
      this.#o.connectTimeoutMs ?? 2000,
    );
    try {
      await new Promise<void>((resolve, reject) => {
        socket.once(secure ? "secureConnect" : "connect", () => resolve());
        socket.once("error", reject);
      });
      socket.write(
        `${PEER_PROTOCOL} ${JSON.stringify({ replica: this.#o.replicaId, secret: this.#o.secret })}\n`,
      );
      const line = await readLine(socket, this.#o.connectTimeoutMs ?? 2000);
      let answer: { ok?: boolean; code?: string; message?: string } = {};
      if (line.startsWith(`${PEER_PROTOCOL} `))
        try {
          answer = JSON.parse(line.slice(PEER_PROTOCOL.length + 1));
        } catch {}
      else
        answer = { code: "RD_ERR_PEER_PROTOCOL", message: "not a revdial peer (an older revdial version?)" };
      if (answer.ok !== true)
        throw new Error(`${answer.code ?? "refused"}: ${answer.message ?? line.slice(0, 200)}`);
    } catch (err) {
      clearTimeout(timer);
      socket.destroy();
      this.#o.logger.warn(
        { err: (err as Error).message, peer: replicaId, url },
        "peer link could not be set up",
      );
      throw new PeerUnreachableError(replicaId, err);
    }
    clearTimeout(timer);
    socket.on("error", () => {});
    const muxLink = new RawMuxLink(socket);
    const session: MuxSession = new MuxSession({
      link: muxLink,
      role: "api",
      // The peer is shutting down: no new call goes to it; the link ends once its calls are done.
      onGoaway: () => {
        forget("peer said goodbye");
        void session.whenIdle().then(() => session.close(1000, "peer said goodbye"));
      },
    });
    const link: PeerLink = { session, hosts: new Map(), closed: false };
    const forget = (why: string) => {
      if (link.closed) return;
      link.closed = true;
      clearInterval(pinger);
      this.#links.delete(url);
      this.#o.logger.debug({ peer: replicaId, err: why }, "peer link closed");
    };
    const pinger = setInterval(() => {
      if (Date.now() - session.lastFrameAt > PEER_DEAD_MS) {
        session.destroy("peer link silent");
        return;
      }
      session.ping();
    }, PEER_PING_MS);
    pinger.unref();
    muxLink.onClose((reason) => forget(reason));
    socket.resume();
    return link;
  }

  /**
   * Forwards a call to the replica at `url`. Resolves with the sandbox's answer (its body streamed
   * from the peer), or rejects with the peer's error, PeerNotHeldError, PeerUnreachableError, or a
   * TunnelTimeoutError/TunnelAbortedError of its own. A streamed body is only read once the peer has
   * accepted the call (OPENED), so a call the peer refused can be sent elsewhere.
   */
  async request(
    url: string,
    replicaId: string,
    runnerId: string,
    req: TunnelRequest,
    timeoutMs: number,
  ): Promise<TunnelResponse> {
    this.#o.onForwardedOut?.();
    const link = await this.#link(url, replicaId);
    const target = req.target ?? DEFAULT_TARGET;
    const replayable = req.body == null || typeof req.body === "string" || Buffer.isBuffer(req.body);
    const isHead = req.method.toUpperCase() === "HEAD";
    const key = `${runnerId}\n${target}`;
    const failure = (code: number, message: string) =>
      streamFailure(code, message, replicaId, runnerId, true);
    if (req.body instanceof Readable) req.body.on("error", () => {});
    return withDeadline(runnerId, timeoutMs, req.signal, async (track) => {
      for (let attempt = 0; ; attempt++) {
        const stream = link.session.open(
          JSON.stringify({ op: "call", runner: runnerId, target, fresh: attempt > 0 }),
        );
        if (!stream) throw new PeerUnreachableError(replicaId, new Error("link takes no new streams"));
        let mode = "splice";
        const options = {
          runnerId,
          host: link.hosts.get(key) ?? "",
          reused: false,
          release: () => stream.end(),
          discard: () => {},
          failure,
        };
        const learn = (info: string) => {
          let parsed: { host?: string; reused?: boolean; mode?: string } = {};
          try {
            parsed = JSON.parse(info);
          } catch {}
          mode = parsed.mode ?? "splice";
          options.reused = parsed.reused === true;
          if (parsed.host) link.hosts.set(key, parsed.host);
          return parsed.host ?? "";
        };
        if (!(options.host && replayable)) {
          // The Host value is not known yet, or the body cannot be sent twice: wait for the peer.
          const info = await opened(stream, track, failure).catch((err: Error) => {
            if (err instanceof TargetRefusal) return err;
            throw err;
          });
          if (info instanceof TargetRefusal) return refusalAnswer(info.status, info.message);
          options.host = learn(info) || target;
        } else stream.onOpened = learn;
        const exchange = new Http1Exchange(stream, options, isHead);
        track({ cancel: (err) => exchange.abort(err) });
        let res: TunnelResponse;
        try {
          res = await exchange.start(req);
        } catch (err) {
          if (err instanceof TargetRefusal) return refusalAnswer(err.status, err.message);
          if (err instanceof StaleConnectionError && attempt === 0 && replayable) continue;
          if (err instanceof StaleConnectionError) throw new TunnelStreamError(runnerId, err.message);
          throw err;
        }
        const carried = mode === "http" ? res.headers[ERROR_HEADER] : undefined;
        if (carried !== undefined) {
          res.body.destroy();
          throw decodeError(Array.isArray(carried) ? carried[0] : carried, replicaId);
        }
        return res;
      }
    });
  }

  /** Opens a raw byte stream to `target` in the runner, through the replica at `url`. */
  async open(
    url: string,
    replicaId: string,
    runnerId: string,
    target: string,
    options: OpenOptions & { timeoutMs: number },
  ): Promise<Duplex> {
    this.#o.onForwardedOut?.();
    const link = await this.#link(url, replicaId);
    const failure = (code: number, message: string) =>
      streamFailure(code, message, replicaId, runnerId, false);
    return withDeadline(runnerId, options.timeoutMs, options.signal, async (track) => {
      const stream = link.session.open(JSON.stringify({ op: "open", runner: runnerId, target }));
      if (!stream) throw new PeerUnreachableError(replicaId, new Error("link takes no new streams"));
      await opened(stream, track, failure);
      return streamDuplex(stream, failure);
    });
  }

  /** A small JSON exchange with a peer (tunnel list, eviction). */
  async json<T>(url: string, replicaId: string, op: Record<string, unknown>, timeoutMs = 3000): Promise<T> {
    const link = await this.#link(url, replicaId);
    return withDeadline("", timeoutMs, undefined, async (track) => {
      const stream = link.session.open(JSON.stringify(op));
      if (!stream) throw new PeerUnreachableError(replicaId, new Error("link takes no new streams"));
      const chunks: Buffer[] = [];
      const text = await new Promise<string>((resolve, reject) => {
        track({
          cancel: (err) => {
            stream.reset(MUX_CODE.CANCEL, "");
            reject(new PeerUnreachableError(replicaId, err));
          },
        });
        stream.onData = (chunk) => {
          chunks.push(chunk);
          stream.consumed(chunk.length);
        };
        stream.onEnd = () => {
          resolve(Buffer.concat(chunks).toString("utf8"));
          stream.end();
        };
        stream.onReset = (code, message) =>
          reject(
            code === MUX_CODE.INTERNAL && message.startsWith("{")
              ? decodeError(message, replicaId)
              : new PeerUnreachableError(replicaId, new Error(message || `stream reset (code ${code})`)),
          );
      });
      return JSON.parse(text) as T;
    });
  }

  tunnels(url: string, replicaId: string): Promise<TunnelStats[]> {
    return this.json<TunnelStats[]>(url, replicaId, { op: "tunnels" });
  }

  close(): void {
    this.#closed = true;
    for (const made of this.#links.values())
      made.then(
        (link) => link.session.close(1000, "replica shutting down"),
        () => {},
      );
    this.#links.clear();
  }
}

// The conversation with a session's agent over HTTP (the agent's side is the sync WebSocket, served
// by src/api/sync-hub.ts on the upgrade listener):
//
//   GET  /api/v1/sessions/{id}/interactions -> 200 [interaction]      owner, admin, or the session key
//   POST /api/v1/sessions/{id}/messages {content} -> 201 interaction + agent_connected  owner/admin,
//        write key; 429 RD_ERR_SYNC_QUEUE_FULL past the queue bound
//   POST /api/v1/sessions/{id}/cancel -> 200 {interaction_id, sent}   owner/admin, write key
//   GET  /api/v1/sessions/{id}/events -> text/event-stream            owner/admin (read keys too)
//
// Another user's session is 404, a session key of another session too (it cannot see it); a session
// key may read its own session's interactions but not speak for the user (403 RD_ERR_AUTH_SCOPE).
//
// The event stream: `interaction` events (the interaction view, with an id `EPOCH.SEQ`; resumable
// with Last-Event-ID, see sync-events.ts), a `snapshot` event when the gap cannot be replayed (then
// every interaction as it is now), and `session` events without id ({status, agent_connected}) at the
// start and whenever either changes (checked every statusPollMs, default 2 s, which also writes a
// keep-alive comment so that proxies keep the stream open).

import type { ServerResponse } from "node:http";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import type { Session } from "../../store/index.ts";
import { principalOf, requireUser, requireWrite } from "../auth.ts";
import type { ApiContext } from "../context.ts";
import { ApiError } from "../http-errors.ts";
import type { EventSink, SyncEvent } from "../sync-events.ts";
import { AgentSyncHub, interactionView, SYNC_ERROR_CODES } from "../sync-hub.ts";
import { idParams } from "./route-schemas.ts";

/** Largest user message, in characters (its chat_message frame must stay under the 1 MiB frame limit). */
export const MAX_MESSAGE_CHARS = 256 * 1024;
/** How often an event stream checks the session's status and writes a keep-alive. */
export const STATUS_POLL_MS = 2_000;
/** A stream whose client leaves more than this unread is ended (it resumes with Last-Event-ID). */
export const MAX_STREAM_BUFFER_BYTES = 1024 * 1024;

const messageBody = {
  type: "object",
  required: ["content"],
  properties: { content: { type: "string", minLength: 1, maxLength: MAX_MESSAGE_CHARS } },
  additionalProperties: false,
} as const;

/** The hub of this app: made once per context, closed with the app. */
function hubOf(app: FastifyInstance, ctx: ApiContext): AgentSyncHub {
  if (!ctx.sync) {
    ctx.sync = new AgentSyncHub({ store: ctx.store, auth: ctx.auth, logger: ctx.logger });
    const hub = ctx.sync;
    app.addHook("preClose", async () => hub.close());
  }
  return ctx.sync;
}

export async function agentSyncRoutes(app: FastifyInstance, ctx: ApiContext): Promise<void> {
  const hub = hubOf(app, ctx);

  app.get<{ Params: { id: string } }>(
    "/api/v1/sessions/:id/interactions",
    { preHandler: ctx.auth.preHandler, schema: { params: idParams } },
    async (request) => {
      const session = await ctx.auth.loadOwnedSession(principalOf(request), request.params.id);
      return (await ctx.store.interactions.list(session.id)).map(interactionView);
    },
  );

  app.post<{ Params: { id: string }; Body: { content: string } }>(
    "/api/v1/sessions/:id/messages",
    { preHandler: ctx.auth.preHandler, schema: { params: idParams, body: messageBody } },
    async (request, reply) => {
      const session = await loadForUser(ctx, request, true);
      const turn = await hub.send(session.id, request.body.content);
      const agentConnected = hub.isConnected(session.id);
      await ctx.store.sessions.touchActivity(session.id);
      request.log.info(
        { session_id: session.id, interaction_id: turn.id, agent_connected: agentConnected },
        "user message",
      );
      return reply.code(201).send({ ...interactionView(turn), agent_connected: agentConnected });
    },
  );

  app.post<{ Params: { id: string } }>(
    "/api/v1/sessions/:id/cancel",
    { preHandler: ctx.auth.preHandler, schema: { params: idParams } },
    async (request) => {
      const session = await loadForUser(ctx, request, true);
      const result = await hub.cancel(session.id);
      request.log.info({ session_id: session.id, ...result }, "turn cancel");
      return result;
    },
  );

  app.get<{ Params: { id: string } }>(
    "/api/v1/sessions/:id/events",
    { preHandler: ctx.auth.preHandler, schema: { params: idParams } },
    async (request, reply) => {
      const session = await loadForUser(ctx, request, false);
      if (!hub.events.hasRoom(session.id)) {
        throw new ApiError(
          429,
          SYNC_ERROR_CODES.tooManyStreams,
          "too many event streams open for this session",
        );
      }
      await streamEvents(ctx, hub, request, reply, session);
    },
  );
}

/** The session for a user-side call: the owner or an admin; `write` also needs a write key. */
async function loadForUser(ctx: ApiContext, request: FastifyRequest, write: boolean): Promise<Session> {
  const principal = principalOf(request);
  const session = await ctx.auth.loadOwnedSession(principal, (request.params as { id: string }).id);
  requireUser(principal);
  if (write) requireWrite(principal);
  return session;
}

function lastEventIdOf(request: FastifyRequest): string | null {
  const header = request.headers["last-event-id"];
  const value = Array.isArray(header) ? header[0] : header;
  return value && value.length <= 64 ? value : null;
}

/** One SSE response. Events published before it is `ready` wait (a snapshot is written first). */
class SseSink implements EventSink {
  readonly #res: ServerResponse;
  #held: SyncEvent[] | null = [];
  #ended = false;

  constructor(res: ServerResponse) {
    this.#res = res;
  }

  write(event: SyncEvent): boolean {
    if (this.#ended) return false;
    if (this.#held) {
      this.#held.push(event);
      return true;
    }
    return this.#send(event);
  }

  /** Writes an event past the held ones (a replay, which is older than anything held). */
  sendNow(event: SyncEvent): boolean {
    return this.#send(event);
  }

  #send(event: SyncEvent): boolean {
    this.raw(`id: ${event.id}\nevent: ${event.event}\ndata: ${JSON.stringify(event.data)}\n\n`);
    if (this.#res.writableLength > MAX_STREAM_BUFFER_BYTES) {
      this.end();
      return false;
    }
    return true;
  }

  /** Writes text as is (comments, events without id). */
  raw(text: string): void {
    if (!this.#ended) this.#res.write(text);
  }

  /** Writes what was held, then events go straight through. */
  ready(): void {
    const held = this.#held ?? [];
    this.#held = null;
    for (const event of held) if (!this.#send(event)) return;
  }

  end(): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#res.end();
  }
}

async function streamEvents(
  ctx: ApiContext,
  hub: AgentSyncHub,
  request: FastifyRequest,
  reply: FastifyReply,
  session: Session,
): Promise<void> {
  reply.hijack();
  const res = reply.raw;
  res.writeHead(200, {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache, no-transform",
    "x-accel-buffering": "no",
    connection: "keep-alive",
  });
  const sink = new SseSink(res);
  const resume = hub.events.attach(session.id, sink, lastEventIdOf(request));
  let seen = { status: session.status as string, agent: hub.isConnected(session.id) };
  const writeSession = () =>
    sink.raw(
      `event: session\ndata: ${JSON.stringify({ session_id: session.id, status: seen.status, agent_connected: seen.agent })}\n\n`,
    );
  const timer = setInterval(async () => {
    const now = await ctx.store.sessions.get(session.id).catch(() => null);
    const next = { status: now?.status ?? seen.status, agent: hub.isConnected(session.id) };
    if (next.status !== seen.status || next.agent !== seen.agent) {
      seen = next;
      writeSession();
    } else sink.raw(": keep-alive\n\n");
  }, STATUS_POLL_MS);
  const stop = () => {
    clearInterval(timer);
    hub.events.detach(session.id, sink);
    sink.end();
  };
  res.once("close", stop);
  writeSession();
  if ("snapshot" in resume) {
    const at = hub.events.currentId(session.id);
    const list = await ctx.store.interactions.list(session.id).catch(() => []);
    sink.raw(`id: ${at}\nevent: snapshot\ndata: ${JSON.stringify({ interactions: list.length })}\n\n`);
    for (const turn of list)
      sink.raw(`event: interaction\ndata: ${JSON.stringify(interactionView(turn))}\n\n`);
  } else {
    for (const event of resume.replay) if (!sink.sendNow(event)) return;
  }
  sink.ready();
}

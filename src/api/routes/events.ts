// The live event stream of the dashboard (and of any client of the API):
//
//   GET /api/v1/events -> 200 text/event-stream        a user or admin key (read keys too)
//
// One stream per client carries, as Server-Sent Events: `ready` once ({admin}), then `session`
// (the session view, as GET /api/v1/sessions/{id} answers it; {id, deleted} when removed), `host`
// (the Wolf instance view) and `tunnel` ({runner_id, state: up|down, session_id?, stats?}). A user
// sees the events of their own sessions and their sandboxes' tunnels; an admin sees everything. The
// key is sent like on every route (Authorization or X-API-Key header), so a browser reads the stream
// with fetch(), never with a key in the URL.
//
// Bounds: a comment (`: keep-alive`) every heartbeatMs (default 15 s), which also checks the key
// again, so a revoked key's stream ends within that; a client that leaves more than
// MAX_CLIENT_BUFFER_BYTES (256 KiB) unread is cut (it reconnects and reloads its lists); streams at
// most: the bus's maxSubscribers (503 past it). Everything a stream holds is released when it closes;
// every stream is ended when the server closes.

import type { ServerResponse } from "node:http";
import type { FastifyInstance, FastifyRequest } from "fastify";
import { principalOf, requireUser } from "../auth.ts";
import type { ApiContext } from "../context.ts";
import { type BusEvent, canSee } from "../events/event-bus.ts";
import { ApiError } from "../http-errors.ts";

export const MAX_CLIENT_BUFFER_BYTES = 256 * 1024;
export const EVENTS_HEARTBEAT_MS = 15_000;

export const EVENTS_ERROR_CODES = Object.freeze({
  unavailable: "RD_ERR_EVENTS_UNAVAILABLE",
});

export interface EventRouteOptions {
  /** Keep-alive and key re-check interval. Default EVENTS_HEARTBEAT_MS. */
  heartbeatMs?: number;
  /** Unread bytes past which a client is cut. Default MAX_CLIENT_BUFFER_BYTES. */
  maxClientBufferBytes?: number;
}

function frame(event: BusEvent): string {
  return `event: ${event.type}\ndata: ${JSON.stringify(event.data)}\n\n`;
}

export async function eventRoutes(
  app: FastifyInstance,
  ctx: ApiContext,
  options: EventRouteOptions = {},
): Promise<void> {
  const heartbeatMs = options.heartbeatMs ?? ctx.config.eventsHeartbeatMs ?? EVENTS_HEARTBEAT_MS;
  const maxBuffer = options.maxClientBufferBytes ?? MAX_CLIENT_BUFFER_BYTES;
  // Open streams, ended when the app closes: a hijacked answer would otherwise hold the drain.
  const open = new Set<(why: string) => void>();
  app.addHook("preClose", async () => {
    for (const end of open) end("server closing");
  });

  app.get("/api/v1/events", { preHandler: ctx.auth.preHandler }, async (request, reply) => {
    const principal = principalOf(request);
    const userId = requireUser(principal);
    const bus = ctx.events;
    if (!bus) throw new ApiError(503, EVENTS_ERROR_CODES.unavailable, "this server has no event stream");
    const viewer = { userId, admin: principal.admin };
    const res = reply.raw;
    let ended = false;
    let timer: NodeJS.Timeout | undefined;
    let unsubscribe: (() => void) | null = null;
    const end = (why: string) => {
      if (ended) return;
      ended = true;
      open.delete(end);
      unsubscribe?.();
      clearInterval(timer);
      request.log.debug({ user_id: userId, why }, "event stream ended");
      res.end();
    };
    unsubscribe = bus.subscribe((event) => {
      if (ended || !canSee(viewer, event)) return;
      send(res, frame(event));
      if (res.writableLength > maxBuffer) {
        request.log.warn(
          { user_id: userId, unread: res.writableLength },
          "event stream client too slow: cut",
        );
        res.destroy();
        end("slow client");
      }
    });
    if (!unsubscribe) {
      throw new ApiError(503, EVENTS_ERROR_CODES.unavailable, "too many open event streams; retry later", {
        retryAfterSeconds: 5,
      });
    }
    timer = setInterval(async () => {
      if (!(await stillValid(ctx, request))) return end("key no longer valid");
      send(res, ": keep-alive\n\n");
    }, heartbeatMs);
    reply.hijack();
    res.writeHead(200, {
      "content-type": "text/event-stream; charset=utf-8",
      "cache-control": "no-cache, no-transform",
      "x-accel-buffering": "no",
      connection: "keep-alive",
    });
    res.once("close", () => end("client left"));
    open.add(end);
    send(res, `retry: 2000\nevent: ready\ndata: ${JSON.stringify({ admin: principal.admin })}\n\n`);
  });
}

function send(res: ServerResponse, text: string): void {
  if (!res.destroyed && !res.writableEnded) res.write(text);
}

/** The stream's key still authenticates (it was not revoked or expired since the stream opened). */
async function stillValid(ctx: ApiContext, request: FastifyRequest): Promise<boolean> {
  try {
    return (await ctx.auth.authenticate(request.headers)) !== null;
  } catch {
    return true; // a store outage is not a revocation: keep the stream, check again next time
  }
}

// The listening server: node:http, or node:https with the server's certificate, made with the
// settings Fastify gives its own (keep-alive, request and connection timeouts), where every request
// is first offered to a front handler that answers outside Fastify, and goes to Fastify untouched
// when that handler does not take it. The admin proxy is that handler (routes/admin-proxy.ts): the
// hot path, where Fastify's per-request work would cost more than the rest of the API's. Upgrades,
// client errors and close() are the server's as before: Fastify attaches to this server as to its own.

import http, { type IncomingMessage, type ServerResponse } from "node:http";
import https from "node:https";
import type { FastifyServerFactory } from "fastify";

/** Answers the request and returns true, or returns false (and touches nothing) to leave it to Fastify. */
export type FrontHandler = (req: IncomingMessage, res: ServerResponse) => boolean;

/** The Fastify settings this server takes over, from Fastify's resolved options (its defaults set). */
interface ServerSettings {
  keepAliveTimeout: number;
  requestTimeout: number;
  connectionTimeout: number;
  maxRequestsPerSocket: number;
}

/**
 * Responses that always carry `revdial-replica: ID` (a cluster's replica says who answered),
 * whatever wrote their head: Fastify, the admin proxy, an error path that cleared its headers.
 */
function replicaResponse(replicaId: string): typeof ServerResponse {
  class ReplicaResponse extends http.ServerResponse {}
  const writeHead = http.ServerResponse.prototype.writeHead;
  // An implicit head (end() without writeHead) goes through writeHead too.
  ReplicaResponse.prototype.writeHead = function (this: ServerResponse, ...args: unknown[]) {
    if (!this.headersSent) this.setHeader("revdial-replica", replicaId);
    return writeHead.apply(this, args as Parameters<typeof writeHead>);
  } as typeof writeHead;
  return ReplicaResponse as unknown as typeof ServerResponse;
}

/**
 * Fastify's `serverFactory`: the server for `tls` (null for plain HTTP), with `front` ahead of
 * Fastify's handler. With `replicaId`, every response carries `revdial-replica`.
 */
export function frontedServer(
  front: FrontHandler,
  tls: { key: Buffer; cert: Buffer } | null | undefined,
  replicaId?: string | null,
): FastifyServerFactory {
  return (fastify, opts) => {
    const handler = (req: IncomingMessage, res: ServerResponse): void => {
      if (!front(req, res)) fastify(req, res);
    };
    const options = replicaId ? { ServerResponse: replicaResponse(replicaId) } : {};
    const server = tls
      ? https.createServer({ ...tls, ...options }, handler)
      : http.createServer(options, handler);
    // As Fastify sets up the server it makes itself (fastify/lib/server.js).
    const settings = opts as unknown as ServerSettings;
    server.keepAliveTimeout = settings.keepAliveTimeout;
    server.requestTimeout = settings.requestTimeout;
    server.setTimeout(settings.connectionTimeout);
    if (settings.maxRequestsPerSocket > 0) server.maxRequestsPerSocket = settings.maxRequestsPerSocket;
    return server;
  };
}

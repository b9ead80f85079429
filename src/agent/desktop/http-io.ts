// The HTTP plumbing of the desktop service: reading a request body under a byte limit, and writing
// answers. Errors leave in one shape, chosen by the client's Accept header: JSON
// {"error":{"code","message"}} (the shape the control plane's API uses) when the client accepts
// application/json and no text type, the bare message as text/plain otherwise.

import type { IncomingMessage, ServerResponse } from "node:http";
import { RevdialError } from "../../common/errors.ts";
import { BodyTooLargeError, desktopStatusOf, MethodNotAllowedError } from "./errors.ts";

/** The whole body, or BodyTooLargeError as soon as it (or its declared length) passes `limit`. */
export function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  const declared = Number(req.headers["content-length"]);
  if (declared > limit) return Promise.reject(new BodyTooLargeError(limit));
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size <= limit) chunks.push(chunk);
      else {
        req.off("data", onData);
        req.resume();
        reject(new BodyTooLargeError(limit));
      }
    };
    req.on("data", onData);
    req.on("end", () => resolve(Buffer.concat(chunks)));
    req.on("error", reject);
  });
}

/** True when errors should be answered as JSON for this request (see header). */
export function wantsJson(req: IncomingMessage): boolean {
  const accept = (req.headers.accept ?? "").toLowerCase();
  return accept.includes("application/json") && !accept.includes("text/");
}

export function sendError(req: IncomingMessage, res: ServerResponse, err: unknown): void {
  const status = desktopStatusOf(err);
  const code = err instanceof RevdialError ? err.code : "RD_ERR_INTERNAL";
  const message = err instanceof RevdialError ? err.message : "internal error";
  if (err instanceof MethodNotAllowedError) res.setHeader("Allow", err.allow);
  // A body that was too large is left unread: do not keep a connection whose input is still arriving.
  if (status === 413) res.setHeader("Connection", "close");
  if (wantsJson(req)) sendJson(res, status, { error: { code, message } });
  else sendText(res, status, message);
}

export function sendJson(res: ServerResponse, status: number, value: unknown): void {
  send(res, status, "application/json; charset=utf-8", Buffer.from(JSON.stringify(value)));
}

export function sendText(res: ServerResponse, status: number, text: string): void {
  send(res, status, "text/plain; charset=utf-8", Buffer.from(text));
}

export function send(res: ServerResponse, status: number, contentType: string, body: Buffer): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  res.writeHead(status, {
    "Content-Type": contentType,
    "Content-Length": body.length,
    "Cache-Control": "no-store",
  });
  res.end(body);
}

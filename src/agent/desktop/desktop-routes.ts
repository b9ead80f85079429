// The desktop service's routes, as one node:http request listener that any server can mount (the
// service's own TCP listener, or a tunnel that hands streams to it directly):
//   GET  /health      200 "OK screenshot=<capture> clipboard=<clipboard>"
//   GET  /screenshot  the screen as image/png or image/jpeg (query: screenshot-query.ts)
//   GET  /clipboard   200 {"type":"text"|"image","data":...}
//   POST /clipboard   204, body of the same shape (clipboard-body.ts)
// Handlers throw DesktopErrors; http-io.ts turns them into status and body in one place.

import type { IncomingMessage, ServerResponse } from "node:http";
import type { Logger } from "../../common/logger.ts";
import { clipboardToJson, parseClipboardBody } from "./clipboard-body.ts";
import type { ConcurrencyLimit } from "./concurrency-limit.ts";
import type { DesktopProviders } from "./desktop-types.ts";
import { CaptureFailedError, desktopStatusOf, MethodNotAllowedError, RouteNotFoundError } from "./errors.ts";
import { readBody, send, sendError, sendJson, sendText } from "./http-io.ts";
import { CONTENT_TYPES, sniffImageFormat } from "./image-encode.ts";
import { parseScreenshotQuery } from "./screenshot-query.ts";

export interface DesktopRoutesOptions {
  providers: DesktopProviders;
  captureLimit: ConcurrencyLimit;
  clipboardLimit: ConcurrencyLimit;
  bodyLimit: number;
  logger: Logger;
}

type Handler = (req: IncomingMessage, res: ServerResponse, url: URL) => Promise<void>;

/** The request listener serving every route. */
export function createDesktopHandler(
  options: DesktopRoutesOptions,
): (req: IncomingMessage, res: ServerResponse) => void {
  const routes: Record<string, Record<string, Handler>> = {
    "/health": { GET: (_req, res) => health(options, res) },
    "/screenshot": { GET: (_req, res, url) => screenshot(options, res, url) },
    "/clipboard": {
      GET: (_req, res) => readClipboard(options, res),
      POST: (req, res) => writeClipboard(options, req, res),
    },
  };
  return (req, res) => {
    const url = new URL(req.url ?? "/", "http://desktop");
    const started = performance.now();
    dispatch(routes, req, res, url)
      .catch((err: unknown) => {
        logFailure(options.logger, req, url, err);
        sendError(req, res, err);
      })
      .finally(() => {
        const ms = Math.round(performance.now() - started);
        options.logger.debug(
          { method: req.method, path: url.pathname, status: res.statusCode, ms },
          "desktop request",
        );
      });
  };
}

async function dispatch(
  routes: Record<string, Record<string, Handler>>,
  req: IncomingMessage,
  res: ServerResponse,
  url: URL,
): Promise<void> {
  const methods = routes[url.pathname];
  const method = req.method ?? "GET";
  if (!methods) throw new RouteNotFoundError(method, url.pathname);
  const handler = methods[method];
  if (!handler) throw new MethodNotAllowedError(method, url.pathname, Object.keys(methods).join(", "));
  return handler(req, res, url);
}

async function health(options: DesktopRoutesOptions, res: ServerResponse): Promise<void> {
  const { capture, clipboard } = options.providers;
  sendText(res, 200, `OK screenshot=${capture.name} clipboard=${clipboard.name}`);
}

async function screenshot(options: DesktopRoutesOptions, res: ServerResponse, url: URL): Promise<void> {
  const request = parseScreenshotQuery(url.searchParams);
  const shot = await options.captureLimit.run(() => options.providers.capture.capture(request));
  const format = sniffImageFormat(shot.data);
  // Never label bytes as something they are not; a provider that returns anything else is broken.
  if (!format)
    throw new CaptureFailedError(`the ${options.providers.capture.name} provider returned no PNG or JPEG`);
  res.setHeader("X-Screenshot-Width", String(shot.width));
  res.setHeader("X-Screenshot-Height", String(shot.height));
  send(res, 200, CONTENT_TYPES[format], shot.data);
}

async function readClipboard(options: DesktopRoutesOptions, res: ServerResponse): Promise<void> {
  const content = await options.clipboardLimit.run(() => options.providers.clipboard.read());
  sendJson(res, 200, clipboardToJson(content));
}

async function writeClipboard(
  options: DesktopRoutesOptions,
  req: IncomingMessage,
  res: ServerResponse,
): Promise<void> {
  const content = parseClipboardBody(await readBody(req, options.bodyLimit));
  await options.clipboardLimit.run(() => options.providers.clipboard.write(content));
  res.writeHead(204, { "Cache-Control": "no-store" });
  res.end();
}

function logFailure(logger: Logger, req: IncomingMessage, url: URL, err: unknown): void {
  const status = desktopStatusOf(err);
  const fields = { method: req.method, path: url.pathname, status, err };
  if (status >= 500 && status !== 501) logger.error(fields, "desktop request failed");
  else logger.debug(fields, "desktop request refused");
}

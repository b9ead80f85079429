// The web dashboard, served by the API itself (no CDN, nothing from elsewhere):
//
//   GET /, /ui, /ui/{app path}  -> index.html (the app routes in the browser), Cache-Control no-cache
//   GET /ui/assets/{name}-{hash}.{js,css} -> the file, cached for a year (its name changes with it)
//   GET /ui/assets/{anything else} -> 404
//
// Every answer has its Content-Type and a strong ETag; If-None-Match answers 304. The files are
// found or built at the first request (web/web-assets.ts); when they cannot be, 503
// RD_ERR_DASHBOARD_UNAVAILABLE with the reason. The dashboard speaks to the API only through the
// public REST routes and GET /api/v1/events, with the key the user signs in with.

import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import type { ApiContext } from "../context.ts";
import { ApiError } from "../http-errors.ts";
import { lazyWebAssets, type WebAsset } from "../web/web-assets.ts";
import { ASSET_DIR } from "../web/web-bundle.ts";
import { ifNoneMatchHits } from "./etag.ts";

const IMMUTABLE = "public, max-age=31536000, immutable";
const REVALIDATE = "no-cache";

function send(request: FastifyRequest, reply: FastifyReply, asset: WebAsset, cacheControl: string) {
  reply
    .header("ETag", asset.etag)
    .header("Cache-Control", cacheControl)
    .header("X-Content-Type-Options", "nosniff");
  if (ifNoneMatchHits(request.headers["if-none-match"], asset.etag)) return reply.code(304).send();
  return reply.type(asset.contentType).send(asset.bytes);
}

export async function webAppRoutes(app: FastifyInstance, ctx: ApiContext): Promise<void> {
  const assets = lazyWebAssets(ctx.logger);
  const load = async () => {
    try {
      return await assets();
    } catch (err) {
      throw new ApiError(503, "RD_ERR_DASHBOARD_UNAVAILABLE", (err as Error).message);
    }
  };

  const page = async (request: FastifyRequest, reply: FastifyReply) => {
    const index = (await load()).get("index.html");
    if (!index) throw new ApiError(503, "RD_ERR_DASHBOARD_UNAVAILABLE", "the dashboard has no index.html");
    // The page is the same for every user; the key stays in the tab (sessionStorage), never here.
    reply.header(
      "Content-Security-Policy",
      "default-src 'self'; img-src 'self' blob: data:; object-src 'none'",
    );
    return send(request, reply, index, REVALIDATE);
  };

  app.get("/", page);
  app.get("/ui", page);
  app.get<{ Params: { "*": string } }>("/ui/*", async (request, reply) => {
    const path = `ui/${request.params["*"]}`;
    if (!path.startsWith(`${ASSET_DIR}/`)) return page(request, reply);
    const asset = (await load()).get(path);
    if (!asset) throw new ApiError(404, "RD_ERR_NOT_FOUND", `no dashboard file ${path}`);
    return send(request, reply, asset, IMMUTABLE);
  });
}

// The dashboard's files as the API serves them: index.html at / and for every app path under /ui
// (so a reload or a shared link works), its hashed assets with their true Content-Type and a
// year-long cache, each with a strong ETag answered by 304; an unknown asset is a 404 in the API's
// error shape, never index.html. And `npm run build:web` writes the same files (dist/web).

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import Fastify, { type FastifyInstance } from "fastify";
import type { ApiContext } from "../../src/api/context.ts";
import { installErrorHandlers } from "../../src/api/error-handler.ts";
import { webAppRoutes } from "../../src/api/routes/web-app.ts";
import { silentLogger } from "../../src/common/logger.ts";

const ROOT = new URL("../..", import.meta.url).pathname;

describe("the dashboard's static files", () => {
  let app: FastifyInstance;
  let url: string;

  before(async () => {
    app = Fastify();
    installErrorHandlers(app);
    await app.register(async (scope) => webAppRoutes(scope, { logger: silentLogger() } as ApiContext));
    url = await app.listen({ host: "127.0.0.1", port: 0 });
  });
  after(() => app.close());

  it("answers index.html for / and the app's paths, and its assets with types, caching and ETags", async () => {
    const home = await fetch(`${url}/`);
    assert.equal(home.status, 200);
    assert.equal(home.headers.get("content-type"), "text/html; charset=utf-8");
    assert.equal(home.headers.get("cache-control"), "no-cache");
    const html = await home.text();
    for (const path of ["/ui", "/ui/", "/ui/sessions/ses_x", "/ui/hosts"]) {
      const page = await fetch(`${url}${path}`);
      assert.equal(page.status, 200, path);
      assert.equal(await page.text(), html, path);
    }
    const etag = home.headers.get("etag")!;
    assert.match(etag, /^"[A-Za-z0-9_-]+"$/);
    const cached = await fetch(`${url}/`, { headers: { "if-none-match": etag } });
    assert.equal(cached.status, 304);

    const js = /src="(\/ui\/assets\/app-[A-Za-z0-9]+\.js)"/.exec(html)?.[1];
    const css = /href="(\/ui\/assets\/app-[A-Za-z0-9]+\.css)"/.exec(html)?.[1];
    assert.ok(js && css, html);
    for (const [path, type] of [
      [js, "text/javascript; charset=utf-8"],
      [css, "text/css; charset=utf-8"],
    ]) {
      const res = await fetch(`${url}${path}`);
      assert.equal(res.status, 200, path);
      assert.equal(res.headers.get("content-type"), type);
      assert.equal(res.headers.get("cache-control"), "public, max-age=31536000, immutable");
      assert.ok((await res.arrayBuffer()).byteLength > 100);
      const again = await fetch(`${url}${path}`, { headers: { "if-none-match": res.headers.get("etag")! } });
      assert.equal(again.status, 304);
    }
    const missing = await fetch(`${url}/ui/assets/app-nothere.js`);
    assert.equal(missing.status, 404);
    assert.equal(((await missing.json()) as { error: { code: string } }).error.code, "RD_ERR_NOT_FOUND");
  });

  it("npm run build:web writes the same files", async () => {
    const out = await mkdtemp(join(tmpdir(), "revdial-web-build-"));
    try {
      await promisify(execFile)(process.execPath, [join(ROOT, "web/build.ts"), out]);
      const assets = await readdir(join(out, "ui/assets"));
      assert.equal(assets.length, 2);
      const html = await readFile(join(out, "index.html"), "utf8");
      const served = await (await fetch(`${url}/`)).text();
      assert.equal(html, served);
      for (const name of assets) assert.ok(html.includes(`/ui/assets/${name}`), name);
    } finally {
      await rm(out, { recursive: true, force: true });
    }
  });
});

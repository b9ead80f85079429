// GET /api/v1/openapi.json: an OpenAPI 3.1 document generated from the routes, served without a
// key, that lists exactly the routes the server registered (every method of every path, none
// missing, none invented), declares every path parameter, says which routes need a key, and
// carries the routes' own schemas (a required body field, say). The admin proxy, which answers
// ahead of Fastify, is in it too. Through a real server on 127.0.0.1.

import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { type RunningServer, startServer } from "../../src/api/server.ts";
import { silentLogger } from "../../src/common/logger.ts";

interface Operation {
  parameters?: { name: string; in: string; required?: boolean }[];
  security?: Record<string, string[]>[];
  requestBody?: { content: Record<string, { schema: { required?: string[] } }> };
}
type Doc = { openapi: string; info: { title: string }; paths: Record<string, Record<string, Operation>> };

const PROXY_PATH = "/api/v1/revdial/{runnerId}/proxy/{path}";
const METHODS = new Set(["get", "head", "post", "put", "patch", "delete"]);

describe("OpenAPI document", () => {
  let dir: string;
  let server: RunningServer;
  let doc: Doc;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "revdial-openapi-"));
    server = await startServer({ listen: "127.0.0.1:0", dataDir: join(dir, "data"), logger: silentLogger() });
    const res = await fetch(`${server.url}/api/v1/openapi.json`);
    assert.equal(res.status, 200, "served without a key");
    assert.match(res.headers.get("content-type") ?? "", /^application\/json/);
    doc = (await res.json()) as Doc;
  });
  after(async () => {
    await server?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("is OpenAPI 3.1 for revdial", () => {
    assert.equal(doc.openapi, "3.1.0");
    assert.equal(doc.info.title, "revdial");
  });

  it("lists exactly the registered routes, every method of every path", () => {
    const registered = server.app.registeredRoutes;
    const gets = new Set(registered.filter((r) => r.method === "GET").map((r) => r.url));
    const fromRoutes = registered
      // Fastify adds a HEAD route beside every GET by itself; the GET stands for both.
      .filter((r) => !(r.method === "HEAD" && gets.has(r.url)))
      .map((r) => `${r.method} ${r.url.replace(/:([A-Za-z0-9_]+)/g, "{$1}").replace(/\*$/, "{path}")}`)
      .sort();
    const fromDoc = Object.entries(doc.paths)
      .filter(([path]) => path !== PROXY_PATH)
      .flatMap(([path, ops]) => Object.keys(ops).map((m) => `${m.toUpperCase()} ${path}`))
      .sort();
    assert.ok(fromRoutes.length >= 30, `the whole API, not a part: ${fromRoutes.length} routes`);
    assert.deepEqual(fromDoc, fromRoutes);
    for (const known of ["GET /healthz", "POST /api/v1/sessions", "GET /api/v1/openapi.json"])
      assert.ok(fromDoc.includes(known), known);
  });

  it("every operation in it is a route the server answers", () => {
    for (const [path, ops] of Object.entries(doc.paths)) {
      if (path === PROXY_PATH) continue;
      // A wildcard route's rest is documented as {path} (at the end of the path).
      const url = path.replace(/\{path\}$/, "*").replace(/\{([A-Za-z0-9_]+)\}/g, ":$1");
      for (const method of Object.keys(ops))
        assert.ok(server.app.hasRoute({ method: method.toUpperCase() as "GET", url }), `${method} ${path}`);
    }
  });

  it("declares every path parameter", () => {
    for (const [path, ops] of Object.entries(doc.paths)) {
      const names = [...path.matchAll(/\{([A-Za-z0-9_]+)\}/g)].map((m) => m[1]);
      for (const [method, op] of Object.entries(ops)) {
        assert.ok(METHODS.has(method), `${method} ${path}`);
        const declared = (op.parameters ?? []).filter((p) => p.in === "path").map((p) => p.name);
        assert.deepEqual(declared.sort(), [...names].sort(), `${method} ${path}`);
      }
    }
  });

  it("says which routes need a key, and carries the routes' schemas", () => {
    assert.equal(doc.paths["/healthz"].get.security, undefined);
    assert.ok(doc.paths["/api/v1/sessions"].get.security?.some((s) => "bearer" in s));
    assert.ok(doc.paths["/api/v1/revdial/connections"].get.security?.some((s) => "bearer" in s));
    const createUser = doc.paths["/api/v1/users"].post.requestBody?.content["application/json"].schema;
    assert.deepEqual(createUser?.required, ["name"]);
    assert.deepEqual(Object.keys(doc.paths[PROXY_PATH]).sort(), [
      "delete",
      "get",
      "head",
      "patch",
      "post",
      "put",
    ]);
  });
});

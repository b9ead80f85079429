// Screenshot and clipboard through the tunnel contract (a stand-in dialer and desktop, see the
// harness): streaming, ETag and 304, Content-Type true to the bytes, each failure's status, the
// paused screenshot, and ownership from the attacker's side.

import assert from "node:assert/strict";
import { after, before, beforeEach, describe, it } from "node:test";
import type { Session } from "../../src/store/index.ts";
import {
  type FakeDesktop,
  type Harness,
  JPEG_BYTES,
  PNG_BYTES,
  startFakeDesktop,
  startHarness,
} from "./control-plane-harness.ts";

describe("screenshot and clipboard through the tunnel", () => {
  let h: Harness;
  let desktop: FakeDesktop;
  let aliceKey: string;
  let bobKey: string;
  let session: Session;
  let shotPath: string;
  let clipPath: string;

  before(async () => {
    h = await startHarness({ callTimeoutMs: 500 });
    desktop = await startFakeDesktop();
    const alice = await h.auth.createUser({ name: "alice" });
    const bob = await h.auth.createUser({ name: "bob" });
    aliceKey = alice.apiKey;
    bobKey = bob.apiKey;
    session = await h.store.sessions.create({ ownerId: alice.user.id });
    shotPath = `/api/v1/external-agents/${session.id}/screenshot`;
    clipPath = `/api/v1/external-agents/${session.id}/clipboard`;
  });
  beforeEach(() => {
    h.dialer.connect(`sandbox-${session.id}`, desktop.url);
    desktop.behaviour = {
      ...desktop.behaviour,
      etag: null,
      failWith: null,
      hang: false,
      streamScreenshot: null,
    };
    desktop.behaviour.screenshot = PNG_BYTES;
    desktop.behaviour.contentType = "image/png";
    desktop.seen.length = 0;
  });
  after(async () => {
    await desktop.close();
    await h.close();
  });

  describe("screenshot", () => {
    it("returns the image with Content-Type, ETag and Cache-Control; If-None-Match gives 304", async () => {
      const res = await h.call("GET", shotPath, { key: aliceKey });
      assert.equal(res.status, 200);
      assert.deepEqual(res.body, PNG_BYTES);
      assert.equal(res.headers.get("content-type"), "image/png");
      assert.equal(res.headers.get("cache-control"), "private, no-cache, must-revalidate");
      const etag = res.headers.get("etag");
      assert.match(etag ?? "", /^"[A-Za-z0-9_-]+"$/);
      const again = await h.call("GET", shotPath, { key: aliceKey, headers: { "if-none-match": etag! } });
      assert.equal(again.status, 304);
      assert.equal(again.body.length, 0);
      assert.equal(again.headers.get("etag"), etag);
    });

    it("passes format and quality to the sandbox and validates them", async () => {
      desktop.behaviour.screenshot = JPEG_BYTES;
      desktop.behaviour.contentType = "image/jpeg";
      const res = await h.call("GET", `${shotPath}?format=jpeg&quality=70`, { key: aliceKey });
      assert.equal(res.status, 200);
      assert.equal(res.headers.get("content-type"), "image/jpeg");
      assert.equal(desktop.seen[0].path, "/screenshot?format=jpeg&quality=70");
      assert.equal((await h.call("GET", `${shotPath}?format=gif`, { key: aliceKey })).status, 400);
      assert.equal((await h.call("GET", `${shotPath}?quality=0`, { key: aliceKey })).status, 400);
    });

    it("labels the bytes by what they are, not by what the sandbox claims", async () => {
      desktop.behaviour.screenshot = JPEG_BYTES;
      desktop.behaviour.contentType = "image/png";
      assert.equal(
        (await h.call("GET", shotPath, { key: aliceKey })).headers.get("content-type"),
        "image/jpeg",
      );
      desktop.behaviour.etag = '"tagged"';
      assert.equal(
        (await h.call("GET", shotPath, { key: aliceKey })).headers.get("content-type"),
        "image/jpeg",
      );
    });

    it("streams without buffering when the sandbox tags its image; its 304 passes through", async () => {
      desktop.behaviour.etag = '"v1"';
      let release!: () => void;
      const released = new Promise<void>((r) => {
        release = r;
      });
      const half = Buffer.alloc(256 * 1024, 1);
      desktop.behaviour.streamScreenshot = (res) => {
        res.write(PNG_BYTES.subarray(0, 8));
        res.write(half);
        void released.then(() => res.end(half));
      };
      const res = await fetch(h.url + shotPath, { headers: { authorization: `Bearer ${aliceKey}` } });
      // Headers and the first bytes arrive while the sandbox is still holding back the rest.
      assert.equal(res.status, 200);
      assert.equal(res.headers.get("etag"), '"v1"');
      assert.equal(res.headers.get("content-type"), "image/png");
      const reader = res.body!.getReader();
      let received = 0;
      while (received < 8 + half.length) received += (await reader.read()).value?.length ?? 0;
      release();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        received += value.length;
      }
      assert.equal(received, 8 + 2 * half.length);
      desktop.behaviour.streamScreenshot = null;
      const cached = await h.call("GET", shotPath, { key: aliceKey, headers: { "if-none-match": '"v1"' } });
      assert.equal(cached.status, 304);
      assert.equal(desktop.seen.at(-1)?.headers["if-none-match"], '"v1"');
    });

    it("503 with the tunnel's code and text when the sandbox is not connected", async () => {
      h.dialer.disconnect(`sandbox-${session.id}`);
      const res = await h.call("GET", shotPath, { key: aliceKey });
      assert.equal(res.status, 503);
      assert.deepEqual(res.json(), {
        error: { code: "RD_ERR_TUNNEL_NOT_CONNECTED", message: "Sandbox not connected: no connection" },
      });
    });

    it("502 naming the status and the sandbox's reason when the sandbox answers with an error", async () => {
      desktop.behaviour.failWith = 500;
      const res = await h.call("GET", shotPath, { key: aliceKey });
      assert.equal(res.status, 502);
      assert.deepEqual(res.json(), {
        error: { code: "RD_ERR_SANDBOX_ERROR", message: "sandbox answered 500: desktop failed" },
      });
    });

    it("504 when the sandbox does not answer within the deadline", async () => {
      desktop.behaviour.hang = true;
      const res = await h.call("GET", shotPath, { key: aliceKey });
      assert.equal(res.status, 504);
      assert.equal(res.json<{ error: { code: string } }>().error.code, "RD_ERR_TUNNEL_TIMEOUT");
    });

    it("after a stop, serves the kept final screenshot with X-Paused-Screenshot", async () => {
      const stopped = await h.store.sessions.create({ ownerId: session.ownerId });
      await h.store.sessions.setFinalScreenshot(stopped.id, { bytes: JPEG_BYTES, contentType: "image/jpeg" });
      await h.store.sessions.setStatus(stopped.id, "stopped");
      const res = await h.call("GET", `/api/v1/external-agents/${stopped.id}/screenshot`, { key: aliceKey });
      assert.equal(res.status, 200);
      assert.equal(res.headers.get("x-paused-screenshot"), "true");
      assert.equal(res.headers.get("content-type"), "image/jpeg");
      assert.deepEqual(res.body, JPEG_BYTES);
    });
  });

  describe("clipboard", () => {
    it("GET returns {type, data}; POST sets it and answers 204", async () => {
      const got = await h.call("GET", clipPath, { key: aliceKey });
      assert.equal(got.status, 200);
      assert.deepEqual(got.json(), { type: "text", data: "hello from the sandbox" });
      const set = await h.call("POST", clipPath, {
        key: aliceKey,
        body: { type: "text", data: "from the API" },
      });
      assert.equal(set.status, 204);
      assert.deepEqual(JSON.parse(desktop.seen.at(-1)!.body), { type: "text", data: "from the API" });
      assert.deepEqual((await h.call("GET", clipPath, { key: aliceKey })).json(), {
        type: "text",
        data: "from the API",
      });
    });

    it("400 for another shape, 413 above 10 MiB", async () => {
      for (const body of [
        { type: "html", data: "x" },
        { type: "text" },
        { type: "text", data: 1 },
        { type: "text", data: "x", more: 1 },
      ]) {
        assert.equal(
          (await h.call("POST", clipPath, { key: aliceKey, body })).status,
          400,
          JSON.stringify(body),
        );
      }
      const huge = { type: "text", data: "x".repeat(10 * 1024 * 1024) };
      assert.equal((await h.call("POST", clipPath, { key: aliceKey, body: huge })).status, 413);
      const justUnder = { type: "text", data: "y".repeat(10 * 1024 * 1024 - 64) };
      assert.equal((await h.call("POST", clipPath, { key: aliceKey, body: justUnder })).status, 204);
    });

    it("502 when the sandbox answers something that is not a clipboard", async () => {
      desktop.behaviour.clipboard = "not json";
      const res = await h.call("GET", clipPath, { key: aliceKey });
      assert.equal(res.status, 502);
      desktop.behaviour.clipboard = { type: "text", data: "restored" };
    });
  });

  describe("from the attacker's side", () => {
    it("user B cannot read A's screenshot or clipboard, nor set it: 404, and the sandbox is never called", async () => {
      for (const [method, path, body] of [
        ["GET", shotPath, undefined],
        ["GET", clipPath, undefined],
        ["POST", clipPath, { type: "text", data: "pwned" }],
      ] as const) {
        const res = await h.call(method, path, { key: bobKey, body });
        assert.equal(res.status, 404, `${method} ${path}`);
        assert.equal(res.json<{ error: { code: string } }>().error.code, "RD_ERR_SESSION_NOT_FOUND");
      }
      assert.equal(desktop.seen.length, 0);
    });

    it("a session that does not exist looks the same as someone else's", async () => {
      const res = await h.call("GET", `/api/v1/external-agents/ses_${"0".repeat(26)}/screenshot`, {
        key: bobKey,
      });
      assert.equal(res.status, 404);
    });

    it("read access cannot set the clipboard", async () => {
      const { apiKey } = await h.auth.createUserKey(session.ownerId, { access: "read" });
      assert.equal((await h.call("GET", clipPath, { key: apiKey })).status, 200);
      const res = await h.call("POST", clipPath, { key: apiKey, body: { type: "text", data: "nope" } });
      assert.equal(res.status, 403);
      assert.equal(res.json<{ error: { code: string } }>().error.code, "RD_ERR_AUTH_READ_ONLY");
    });

    it("a session key reaches its own sandbox and no other", async () => {
      const { apiKey } = await h.auth.createSessionKey(session);
      assert.equal((await h.call("GET", shotPath, { key: apiKey })).status, 200);
      const other = await h.store.sessions.create({ ownerId: session.ownerId });
      h.dialer.connect(`sandbox-${other.id}`, desktop.url);
      const res = await h.call("GET", `/api/v1/external-agents/${other.id}/clipboard`, { key: apiKey });
      assert.equal(res.status, 404);
    });

    it("no key: 401", async () => {
      assert.equal((await h.call("GET", shotPath)).status, 401);
    });
  });
});

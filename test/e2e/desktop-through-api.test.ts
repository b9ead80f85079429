// The desktop of a sandbox as a user reaches it: a real Xvfb with known colours, the desktop
// service behind a real agent registered as the session's sandbox, and the API's screenshot and
// clipboard endpoints (and the CLI) on the other side of the tunnel. Nothing talks to the desktop
// service directly.

import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import sharp from "sharp";
import { type DesktopService, startDesktopService } from "../../src/agent/desktop/desktop-service.ts";
import type { AgentClient } from "../../src/agent/tunnel-client.ts";
import { type RunningServer, startServer } from "../../src/api/server.ts";
import { silentLogger } from "../../src/common/logger.ts";
import { missingTools, startXvfb, type Xvfb } from "../agent/desktop/xvfb.ts";
import { startAgent, waitConnected } from "../helpers/tunnel-harness.ts";

const ROOT = new URL("../..", import.meta.url).pathname;
const WIDTH = 320;
const HEIGHT = 240;
const missing = missingTools("Xvfb", "xlogo", "xclip");
if (missing) process.stdout.write(`# SKIPPED desktop through the API: ${missing}\n`);

describe("the sandbox desktop through the API and the tunnel", { skip: missing || false }, () => {
  let dataDir: string;
  let server: RunningServer;
  let xvfb: Xvfb;
  const desktops: DesktopService[] = [];
  const agents: AgentClient[] = [];
  let userKey: string;
  let sessionId: string;
  let headless: string;

  /** A session of the user, with an agent registered as its sandbox serving `desktop`. */
  async function sandbox(env: NodeJS.ProcessEnv): Promise<string> {
    const res = await api("POST", "/api/v1/sessions", { name: "desktop" });
    const id = ((await res.json()) as { id: string }).id;
    const desktop = await startDesktopService({ listen: "127.0.0.1:0", env, logger: silentLogger() });
    desktops.push(desktop);
    const address = desktop.address!;
    const agent = startAgent(server.url, `sandbox-${id}`, `${address.host}:${address.port}`, {
      token: userKey,
    });
    agents.push(agent);
    await waitConnected(server.registry, `sandbox-${id}`);
    return id;
  }

  function api(method: string, path: string, body?: unknown): Promise<Response> {
    return fetch(`${server.url}${path}`, {
      method,
      headers: {
        authorization: `Bearer ${userKey}`,
        ...(body ? { "content-type": "application/json" } : {}),
      },
      body: body ? JSON.stringify(body) : undefined,
    });
  }

  before(async () => {
    dataDir = mkdtempSync(join(tmpdir(), "revdial-desktop-e2e-"));
    server = await startServer({
      listen: "127.0.0.1:0",
      dataDir,
      logger: silentLogger(),
    });
    userKey = (await server.auth.createUser({ name: "alice" })).apiKey;
    xvfb = await startXvfb({ width: WIDTH, height: HEIGHT });
    await xvfb.window([255, 0, 0], { x: 0, y: 0, width: WIDTH / 2, height: HEIGHT });
    await xvfb.window([0, 0, 255], { x: WIDTH / 2, y: 0, width: WIDTH / 2, height: HEIGHT });
    sessionId = await sandbox(xvfb.env);
    const noDisplay = { ...process.env };
    delete noDisplay.DISPLAY;
    delete noDisplay.WAYLAND_DISPLAY;
    headless = await sandbox(noDisplay);
  });

  after(async () => {
    await Promise.all(agents.map((a) => a.close(100)));
    await Promise.all(desktops.map((d) => d.close()));
    await server?.close();
    await xvfb?.close();
    rmSync(dataDir, { recursive: true, force: true });
  });

  for (const format of ["png", "jpeg"] as const) {
    test(`a ${format} screenshot shows the screen: size, colours, and a Content-Type true to the bytes`, async () => {
      const res = await api(
        "GET",
        `/api/v1/external-agents/${sessionId}/screenshot?format=${format}&quality=90`,
      );
      assert.equal(res.status, 200);
      assert.equal(res.headers.get("content-type"), `image/${format}`);
      assert.equal(res.headers.get("cache-control"), "private, no-cache, must-revalidate");
      const bytes = Buffer.from(await res.arrayBuffer());
      const { data, info } = await sharp(bytes).raw().toBuffer({ resolveWithObject: true });
      assert.equal(info.format, "raw");
      assert.deepEqual([info.width, info.height], [WIDTH, HEIGHT]);
      const meta = await sharp(bytes).metadata();
      assert.equal(meta.format, format);
      const at = (x: number, y: number) => [
        ...data.subarray((y * WIDTH + x) * info.channels, (y * WIDTH + x) * info.channels + 3),
      ];
      const near = (got: number[], want: number[]) => got.every((v, i) => Math.abs(v - want[i]) <= 24);
      assert.ok(near(at(40, 120), [255, 0, 0]), `left half red, got ${at(40, 120)}`);
      assert.ok(near(at(280, 120), [0, 0, 255]), `right half blue, got ${at(280, 120)}`);
      const again = await api(
        "GET",
        `/api/v1/external-agents/${sessionId}/screenshot?format=${format}&quality=90`,
      );
      await again.arrayBuffer();
      const etag = again.headers.get("etag");
      if (etag && format === "png") {
        const cached = await fetch(
          `${server.url}/api/v1/external-agents/${sessionId}/screenshot?format=png&quality=90`,
          {
            headers: { authorization: `Bearer ${userKey}`, "if-none-match": etag },
          },
        );
        assert.equal(cached.status, 304);
      }
    });
  }

  test("clipboard text set through the API is what xclip reads, and the other way round", async () => {
    const set = await api("POST", `/api/v1/external-agents/${sessionId}/clipboard`, {
      type: "text",
      data: "héllo from the API",
    });
    assert.equal(set.status, 204);
    const read = execFileSync("xclip", ["-o", "-selection", "clipboard"], {
      env: xvfb.env,
      timeout: 5000,
    }).toString();
    assert.equal(read, "héllo from the API");
    await new Promise<void>((resolve, reject) => {
      const xclip = spawn("xclip", ["-i", "-selection", "clipboard"], {
        env: xvfb.env,
        stdio: ["pipe", "ignore", "ignore"],
      });
      xclip.on("error", reject);
      xclip.on("exit", () => resolve());
      xclip.stdin.end("set by xclip");
    });
    const got = await api("GET", `/api/v1/external-agents/${sessionId}/clipboard`);
    assert.deepEqual(await got.json(), { type: "text", data: "set by xclip" });
  });

  test("a clipboard image round-trips through the API as base64 PNG", async () => {
    const png = await sharp({
      create: { width: 8, height: 6, channels: 3, background: { r: 0, g: 200, b: 0 } },
    })
      .png()
      .toBuffer();
    const set = await api("POST", `/api/v1/external-agents/${sessionId}/clipboard`, {
      type: "image",
      data: png.toString("base64"),
    });
    assert.equal(set.status, 204);
    const got = (await (await api("GET", `/api/v1/external-agents/${sessionId}/clipboard`)).json()) as {
      type: string;
      data: string;
    };
    assert.equal(got.type, "image");
    const meta = await sharp(Buffer.from(got.data, "base64")).metadata();
    assert.deepEqual([meta.format, meta.width, meta.height], ["png", 8, 6]);
  });

  test("a sandbox with no display: the API says 502 with the sandbox's 501 and its reason, and the CLI prints it", async () => {
    const res = await fetch(`${server.url}/api/v1/external-agents/${headless}/screenshot`, {
      headers: { authorization: `Bearer ${userKey}`, accept: "application/json" },
    });
    assert.equal(res.status, 502);
    const body = (await res.json()) as { error: { code: string; message: string } };
    assert.equal(body.error.message, "sandbox answered 501: no display available");
    const cli = spawn(process.execPath, [join(ROOT, "bin/revdial.js"), "spectask", "screenshot", headless], {
      env: { ...process.env, REVDIAL_URL: server.url, REVDIAL_API_KEY: userKey },
      cwd: dataDir,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stderr = "";
    cli.stderr.on("data", (c: Buffer) => {
      stderr += c.toString();
    });
    const code = await new Promise<number | null>((resolve) => cli.once("exit", (c) => resolve(c)));
    assert.equal(code, 1);
    assert.match(
      stderr,
      /^Error: screenshot request failed: 502 - sandbox answered 501: no display available$/m,
    );
  });

  test("the CLI saves a screenshot that is a PNG", async () => {
    const out = join(dataDir, "shot.png");
    // Not execFileSync: it would block the event loop the server runs on.
    const cli = spawn(
      process.execPath,
      [join(ROOT, "bin/revdial.js"), "spectask", "screenshot", sessionId, "-o", out],
      {
        env: { ...process.env, REVDIAL_URL: server.url, REVDIAL_API_KEY: userKey },
        stdio: "ignore",
      },
    );
    assert.equal(await new Promise<number | null>((resolve) => cli.once("exit", (c) => resolve(c))), 0);
    assert.deepEqual([...readFileSync(out).subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  });
});

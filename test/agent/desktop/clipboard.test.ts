// GET and POST /clipboard through real HTTP against a real Xvfb and the real xclip: what the API sets
// is what `xclip -o` reads, what xclip sets is what the API returns, for text and PNG images; and the
// request errors (400 Invalid JSON, 400 wrong shape, 413 over the body limit).

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { after, before, describe, test } from "node:test";
import sharp from "sharp";
import { createDesktopService, type DesktopService } from "../../../src/agent/desktop/desktop-service.ts";
import { missingTools, startXvfb, type Xvfb } from "./xvfb.ts";

const skip = missingTools("Xvfb", "xclip");
const TOOL_TIMEOUT_MS = 10_000;

describe("/clipboard on Xvfb with xclip", { skip }, () => {
  let xvfb: Xvfb;
  let service: DesktopService;
  let base: string;

  before(async () => {
    xvfb = await startXvfb({ width: 320, height: 240 });
    service = createDesktopService({ listen: "127.0.0.1:0", env: xvfb.env });
    base = `http://127.0.0.1:${(await service.listen()).port}`;
  });

  after(async () => {
    await service?.close();
    // Killing the X server also ends the xclip children that still own the selection.
    await xvfb?.close();
  });

  test("an empty clipboard is empty text", async () => {
    const res = await fetch(`${base}/clipboard`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get("content-type") ?? "", /^application\/json/);
    assert.deepEqual(await res.json(), { type: "text", data: "" });
  });

  test("text set through the API is what xclip -o reads", async () => {
    const text = "héllo, wörld ✓\nsecond line";
    const res = await postClipboard(base, { type: "text", data: text });
    assert.equal(res.status, 204);
    assert.equal((await xclip(xvfb, ["-o"])).toString("utf8"), text);
  });

  test("text set with xclip is what the API returns", async () => {
    await xclip(xvfb, ["-i"], Buffer.from("from xclip ✓"));
    assert.deepEqual(await getClipboard(base), { type: "text", data: "from xclip ✓" });
  });

  test("an image set through the API is what xclip -o -t image/png reads", async () => {
    const png = await solidPng(17, 9, { r: 0, g: 200, b: 50 });
    const res = await postClipboard(base, { type: "image", data: png.toString("base64") });
    assert.equal(res.status, 204);
    const targets = (await xclip(xvfb, ["-o", "-t", "TARGETS"])).toString();
    assert.match(targets, /image\/png/);
    assert.ok((await xclip(xvfb, ["-o", "-t", "image/png"])).equals(png));
  });

  test("an image set with xclip is what the API returns, as base64 PNG", async () => {
    const png = await solidPng(5, 4, { r: 255, g: 255, b: 0 });
    await xclip(xvfb, ["-i", "-t", "image/png"], png);
    const content = await getClipboard(base);
    assert.equal(content.type, "image");
    assert.ok(Buffer.from(content.data, "base64").equals(png));
  });

  test("a JPEG set with xclip comes back converted to PNG", async () => {
    const jpeg = await sharp({ create: { width: 8, height: 8, channels: 3, background: "#0000ff" } })
      .jpeg()
      .toBuffer();
    await xclip(xvfb, ["-i", "-t", "image/jpeg"], jpeg);
    const content = await getClipboard(base);
    assert.equal(content.type, "image");
    const meta = await sharp(Buffer.from(content.data, "base64")).metadata();
    assert.deepEqual([meta.format, meta.width, meta.height], ["png", 8, 8]);
  });

  test("a large text (5 MiB) round trips and the request does not hang on xclip's child", async () => {
    const text = "0123456789abcdef".repeat(5 * 65536);
    const started = performance.now();
    assert.equal((await postClipboard(base, { type: "text", data: text })).status, 204);
    assert.ok(performance.now() - started < TOOL_TIMEOUT_MS);
    const back = await getClipboard(base);
    assert.equal(back.data.length, text.length);
    assert.equal(back.data, text);
  });

  test("writes one after another each take effect", async () => {
    for (const data of ["one", "two", "three"]) {
      assert.equal((await postClipboard(base, { type: "text", data })).status, 204);
      assert.equal((await xclip(xvfb, ["-o"])).toString(), data);
    }
  });

  test("concurrent writes are serialised; the clipboard ends with one of them", async () => {
    const values = ["a", "b", "c", "d"];
    const results = await Promise.all(values.map((data) => postClipboard(base, { type: "text", data })));
    for (const res of results) assert.equal(res.status, 204);
    assert.ok(values.includes((await getClipboard(base)).data));
  });

  test("an empty text can be set", async () => {
    assert.equal((await postClipboard(base, { type: "text", data: "" })).status, 204);
    assert.deepEqual(await getClipboard(base), { type: "text", data: "" });
  });

  test("400 Invalid JSON", async () => {
    const res = await fetch(`${base}/clipboard`, { method: "POST", body: "{not json" });
    assert.equal(res.status, 400);
    assert.equal(await res.text(), "Invalid JSON");
  });

  const wrongShapes: Array<[string, unknown]> = [
    ["an array", []],
    ["a string", "text"],
    ["a missing type", { data: "x" }],
    ["an unknown type", { type: "html", data: "x" }],
    ["data not a string", { type: "text", data: 42 }],
    ["image data not base64", { type: "image", data: "***" }],
    ["image data not a PNG", { type: "image", data: Buffer.from("GIF89a....").toString("base64") }],
  ];
  for (const [name, body] of wrongShapes) {
    test(`400 for ${name}`, async () => {
      const res = await postClipboard(base, body, { accept: "application/json" });
      assert.equal(res.status, 400);
      const { error } = (await res.json()) as { error: { code: string } };
      assert.equal(error.code, "RD_ERR_DESKTOP_BAD_REQUEST");
    });
  }

  test("413 over 10 MiB, and the clipboard is unchanged", async () => {
    await postClipboard(base, { type: "text", data: "before" });
    const data = "x".repeat(10 * 1024 * 1024);
    const res = await postClipboard(base, { type: "text", data }, { accept: "application/json" });
    assert.equal(res.status, 413);
    const { error } = (await res.json()) as { error: { code: string } };
    assert.equal(error.code, "RD_ERR_DESKTOP_BODY_TOO_LARGE");
    assert.deepEqual(await getClipboard(base), { type: "text", data: "before" });
  });

  test("413 for a chunked body without Content-Length that passes the limit", async () => {
    const small = createDesktopService({ listen: "127.0.0.1:0", env: xvfb.env, bodyLimit: 1000 });
    try {
      const port = (await small.listen()).port;
      const chunks = new ReadableStream({
        start(controller) {
          for (let i = 0; i < 20; i++) controller.enqueue(new TextEncoder().encode("x".repeat(100)));
          controller.close();
        },
      });
      const res = await fetch(`http://127.0.0.1:${port}/clipboard`, {
        method: "POST",
        body: chunks,
        duplex: "half",
      } as RequestInit);
      assert.equal(res.status, 413);
      await res.arrayBuffer();
    } finally {
      await small.close();
    }
  });
});

interface ClipboardJson {
  type: string;
  data: string;
}

function postClipboard(base: string, body: unknown, headers: Record<string, string> = {}): Promise<Response> {
  return fetch(`${base}/clipboard`, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify(body),
  });
}

async function getClipboard(base: string): Promise<ClipboardJson> {
  const res = await fetch(`${base}/clipboard`);
  assert.equal(res.status, 200);
  return (await res.json()) as ClipboardJson;
}

function solidPng(
  width: number,
  height: number,
  background: { r: number; g: number; b: number },
): Promise<Buffer> {
  return sharp({ create: { width, height, channels: 3, background } })
    .png()
    .toBuffer();
}

/** Runs xclip on the test display. For -i its stdout/stderr go nowhere: its forked child keeps them. */
function xclip(xvfb: Xvfb, args: string[], input?: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const copying = input !== undefined;
    const child = spawn("xclip", ["-selection", "clipboard", ...args], {
      env: xvfb.env,
      stdio: [copying ? "pipe" : "ignore", copying ? "ignore" : "pipe", "ignore"],
    });
    const out: Buffer[] = [];
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`xclip ${args.join(" ")} timed out`));
    }, TOOL_TIMEOUT_MS);
    child.stdout?.on("data", (chunk: Buffer) => out.push(chunk));
    child.on("error", reject);
    child.on("exit", (code) => {
      clearTimeout(timer);
      if (code === 0) resolve(Buffer.concat(out));
      else reject(new Error(`xclip ${args.join(" ")} exited with ${code}`));
    });
    child.stdin?.end(input);
  });
}

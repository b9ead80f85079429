// GET /screenshot and /health through real HTTP against a real Xvfb: two windows of known colours side
// by side, captured as PNG and JPEG, decoded with sharp, checked for size and pixels.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import sharp from "sharp";
import { createDesktopService, type DesktopService } from "../../../src/agent/desktop/desktop-service.ts";
import { missingTools, type Rgb, startXvfb, type Xvfb } from "./xvfb.ts";

const skip = missingTools("Xvfb", "xlogo");
const WIDTH = 640;
const HEIGHT = 480;
const RED: Rgb = [255, 0, 0];
const BLUE: Rgb = [0, 0, 255];

describe("GET /screenshot on Xvfb", { skip }, () => {
  let xvfb: Xvfb;
  let service: DesktopService;
  let base: string;

  before(async () => {
    xvfb = await startXvfb({ width: WIDTH, height: HEIGHT });
    await xvfb.window(RED, { x: 0, y: 0, width: WIDTH / 2, height: HEIGHT });
    await xvfb.window(BLUE, { x: WIDTH / 2, y: 0, width: WIDTH / 2, height: HEIGHT });
    service = createDesktopService({ listen: "127.0.0.1:0", env: xvfb.env });
    base = `http://127.0.0.1:${(await service.listen()).port}`;
  });

  after(async () => {
    await service?.close();
    await xvfb?.close();
  });

  test("PNG is labelled image/png and holds the exact pixels", async () => {
    const res = await fetch(`${base}/screenshot?format=png`);
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("content-type"), "image/png");
    const image = await decode(res);
    assert.equal(image.format, "png");
    assert.deepEqual([image.width, image.height], [WIDTH, HEIGHT]);
    assert.deepEqual(image.pixel(WIDTH / 4, HEIGHT / 2), RED);
    assert.deepEqual(image.pixel((3 * WIDTH) / 4, HEIGHT / 2), BLUE);
  });

  test("PNG is the default format", async () => {
    const res = await fetch(`${base}/screenshot`);
    assert.equal(res.headers.get("content-type"), "image/png");
    assert.equal((await decode(res)).format, "png");
  });

  test("JPEG is labelled image/jpeg and holds the pixels within tolerance", async () => {
    const res = await fetch(`${base}/screenshot?format=jpeg&quality=90`);
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("content-type"), "image/jpeg");
    const image = await decode(res);
    assert.equal(image.format, "jpeg");
    assert.deepEqual([image.width, image.height], [WIDTH, HEIGHT]);
    assertNear(image.pixel(WIDTH / 4, HEIGHT / 2), RED, 16);
    assertNear(image.pixel((3 * WIDTH) / 4, HEIGHT / 2), BLUE, 16);
  });

  test("a lower JPEG quality gives a smaller file", async () => {
    const low = await (await fetch(`${base}/screenshot?format=jpeg&quality=5`)).arrayBuffer();
    const high = await (await fetch(`${base}/screenshot?format=jpeg&quality=100`)).arrayBuffer();
    assert.ok(low.byteLength < high.byteLength, `${low.byteLength} < ${high.byteLength}`);
  });

  test("include_cursor=true draws the pointer (Xvfb starts it at the screen's centre)", async () => {
    const plain = await decode(await fetch(`${base}/screenshot?include_cursor=false`));
    const plainAgain = await decode(await fetch(`${base}/screenshot`));
    const withCursor = await decode(await fetch(`${base}/screenshot?include_cursor=true`));
    assert.equal(plain.differingPixels(plainAgain), 0, "without the cursor, two shots are the same");
    const all = withCursor.differingPixels(plain);
    const near = withCursor.differingPixels(plain, { x: WIDTH / 2 - 32, y: HEIGHT / 2 - 32, size: 64 });
    assert.ok(near > 0, "with the cursor, pixels around the pointer differ");
    assert.equal(all, near, "and only there");
  });

  for (const query of ["format=gif", "quality=0", "quality=101", "quality=abc", "include_cursor=yes"]) {
    test(`400 for ${query}, naming the parameter`, async () => {
      const res = await fetch(`${base}/screenshot?${query}`, { headers: { accept: "application/json" } });
      assert.equal(res.status, 400);
      const body = (await res.json()) as { error: { code: string; message: string } };
      assert.equal(body.error.code, "RD_ERR_DESKTOP_BAD_REQUEST");
      assert.match(body.error.message, new RegExp(query.split("=")[0]));
    });
  }

  test("concurrent screenshots all succeed", async () => {
    const results = await Promise.all(Array.from({ length: 6 }, () => fetch(`${base}/screenshot`)));
    for (const res of results) {
      assert.equal(res.status, 200);
      await res.arrayBuffer();
    }
  });

  test("/health names the providers", async () => {
    const res = await fetch(`${base}/health`);
    assert.equal(res.status, 200);
    assert.equal(await res.text(), "OK screenshot=x11 clipboard=xclip");
  });

  test("unknown path is 404, wrong method 405 with Allow", async () => {
    assert.equal((await fetch(`${base}/nope`)).status, 404);
    const res = await fetch(`${base}/screenshot`, { method: "POST" });
    assert.equal(res.status, 405);
    assert.equal(res.headers.get("allow"), "GET");
  });
});

describe("X server restart", { skip }, () => {
  test("the service reconnects to a display whose X server was restarted", async () => {
    let xvfb = await startXvfb({ width: 320, height: 240 });
    const displayNumber = Number(xvfb.display.slice(1));
    const service = createDesktopService({ listen: "127.0.0.1:0", env: xvfb.env });
    try {
      const base = `http://127.0.0.1:${(await service.listen()).port}`;
      await xvfb.window(RED, { x: 0, y: 0, width: 320, height: 240 });
      assert.deepEqual((await decode(await fetch(`${base}/screenshot`))).pixel(160, 120), RED);
      await xvfb.close();
      assert.equal((await fetch(`${base}/screenshot`)).status, 501, "no X server: no display");
      xvfb = await startXvfb({ width: 320, height: 240, displayNumber });
      await xvfb.window(BLUE, { x: 0, y: 0, width: 320, height: 240 });
      const res = await fetch(`${base}/screenshot`);
      assert.equal(res.status, 200);
      assert.deepEqual((await decode(res)).pixel(160, 120), BLUE);
    } finally {
      await service.close();
      await xvfb.close();
    }
  });
});

describe("no display", () => {
  let service: DesktopService;
  let base: string;

  before(async () => {
    service = createDesktopService({ listen: "127.0.0.1:0", env: { PATH: process.env.PATH } });
    base = `http://127.0.0.1:${(await service.listen()).port}`;
  });

  after(() => service.close());

  test("screenshot is 501 'no display available' as text by default", async () => {
    const res = await fetch(`${base}/screenshot`);
    assert.equal(res.status, 501);
    assert.match(res.headers.get("content-type") ?? "", /^text\/plain/);
    assert.equal(await res.text(), "no display available");
  });

  test("screenshot is 501 with the JSON error shape when the client accepts JSON", async () => {
    const res = await fetch(`${base}/screenshot`, { headers: { accept: "application/json" } });
    assert.equal(res.status, 501);
    assert.deepEqual(await res.json(), {
      error: { code: "RD_ERR_DESKTOP_NO_DISPLAY", message: "no display available" },
    });
  });

  test("clipboard is 501 too", async () => {
    const res = await fetch(`${base}/clipboard`);
    assert.equal(res.status, 501);
    assert.equal(await res.text(), "no display available");
  });

  test("/health says there is no provider", async () => {
    assert.equal(await (await fetch(`${base}/health`)).text(), "OK screenshot=none clipboard=none");
  });
});

interface Decoded {
  format: string;
  width: number;
  height: number;
  pixel(x: number, y: number): Rgb;
  differingPixels(other: Decoded, box?: { x: number; y: number; size: number }): number;
}

async function decode(res: Response): Promise<Decoded> {
  const bytes = Buffer.from(await res.arrayBuffer());
  const format = (await sharp(bytes).metadata()).format;
  const { data, info } = await sharp(bytes).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  const pixel = (x: number, y: number): Rgb => {
    const at = (y * info.width + x) * 3;
    return [data[at], data[at + 1], data[at + 2]];
  };
  const differingPixels = (other: Decoded, box = { x: 0, y: 0, size: Math.max(info.width, info.height) }) => {
    let count = 0;
    for (let y = box.y; y < Math.min(info.height, box.y + box.size); y++) {
      for (let x = box.x; x < Math.min(info.width, box.x + box.size); x++) {
        if (pixel(x, y).some((value, i) => value !== other.pixel(x, y)[i])) count++;
      }
    }
    return count;
  };
  return { format, width: info.width, height: info.height, pixel, differingPixels };
}

function assertNear(actual: Rgb, expected: Rgb, tolerance: number): void {
  const off = actual.some((value, i) => Math.abs(value - expected[i]) > tolerance);
  assert.ok(!off, `${actual} is not within ${tolerance} of ${expected}`);
}

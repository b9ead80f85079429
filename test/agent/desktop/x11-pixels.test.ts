// ZPixmap to RGB conversion and cursor drawing, tested on bytes.

import assert from "node:assert/strict";
import { test } from "node:test";
import {
  drawCursor,
  type PixelLayout,
  rowStride,
  zpixmapToRgb,
} from "../../../src/agent/desktop/x11-pixels.ts";

const BGRX: PixelLayout = {
  bitsPerPixel: 32,
  byteOrder: 0,
  scanlinePad: 32,
  redMask: 0xff0000,
  greenMask: 0x00ff00,
  blueMask: 0x0000ff,
};

test("depth 24 in 32 bits, LSBFirst: B,G,R,X bytes become R,G,B", () => {
  const data = Buffer.from([0x03, 0x02, 0x01, 0xff, 0x30, 0x20, 0x10, 0x00]);
  assert.deepEqual([...zpixmapToRgb(data, 2, 1, BGRX)], [0x01, 0x02, 0x03, 0x10, 0x20, 0x30]);
});

test("MSBFirst: X,R,G,B bytes become R,G,B", () => {
  const data = Buffer.from([0x00, 0x01, 0x02, 0x03]);
  assert.deepEqual([...zpixmapToRgb(data, 1, 1, { ...BGRX, byteOrder: 1 })], [0x01, 0x02, 0x03]);
});

test("swapped masks (BGR visual) read the right bytes", () => {
  const layout = { ...BGRX, redMask: 0x0000ff, blueMask: 0xff0000 };
  const data = Buffer.from([0x01, 0x02, 0x03, 0x00]);
  assert.deepEqual([...zpixmapToRgb(data, 1, 1, layout)], [0x01, 0x02, 0x03]);
});

test("depth 16 (RGB565) with row padding scales channels to 0-255", () => {
  const layout: PixelLayout = {
    bitsPerPixel: 16,
    byteOrder: 0,
    scanlinePad: 32,
    redMask: 0xf800,
    greenMask: 0x07e0,
    blueMask: 0x001f,
  };
  assert.equal(rowStride(3, layout), 8, "3 pixels of 2 bytes pad to 8");
  const row = Buffer.alloc(8);
  row.writeUInt16LE(0xf800, 0); // red
  row.writeUInt16LE(0x07e0, 2); // green
  row.writeUInt16LE(0x001f, 4); // blue
  const data = Buffer.concat([row, row]);
  const rgb = zpixmapToRgb(data, 3, 2, layout);
  assert.deepEqual([...rgb.subarray(0, 9)], [255, 0, 0, 0, 255, 0, 0, 0, 255]);
  assert.deepEqual([...rgb.subarray(9)], [...rgb.subarray(0, 9)]);
});

test("too few bytes for the size is an error, not garbage", () => {
  assert.throws(() => zpixmapToRgb(Buffer.alloc(7), 2, 1, BGRX), /expected 8/);
});

test("an unsupported pixel size is an error", () => {
  assert.throws(
    () => zpixmapToRgb(Buffer.alloc(8), 8, 1, { ...BGRX, bitsPerPixel: 8, redMask: 0xe0 }),
    /8 bits per pixel/,
  );
});

test("drawCursor blends premultiplied ARGB at the hotspot and clips at the edges", () => {
  const rgb = Buffer.alloc(3 * 3 * 3, 100); // 3x3 grey
  const argb = Buffer.alloc(2 * 2 * 4);
  argb.writeUInt32LE(0xffff0000, 0); // opaque red
  argb.writeUInt32LE(0x00000000, 4); // transparent
  argb.writeUInt32LE(0x80000080, 8); // half-transparent blue, premultiplied
  argb.writeUInt32LE(0xff00ff00, 12); // opaque green, falls outside the image
  drawCursor(rgb, 3, 3, { x: 2, y: 1, xhot: 0, yhot: 0, width: 2, height: 2, argb });
  const px = (x: number, y: number) => [...rgb.subarray((y * 3 + x) * 3, (y * 3 + x) * 3 + 3)];
  assert.deepEqual(px(2, 1), [255, 0, 0]);
  assert.deepEqual(px(2, 2), [50, 50, 178]);
  assert.deepEqual(px(1, 1), [100, 100, 100], "pixels left of the cursor are untouched");
});

// Turns the bytes of an X11 GetImage reply (ZPixmap format) into packed RGB, the input sharp encodes,
// and draws the XFIXES cursor image over it. Pure functions on buffers, so they are tested on bytes.
//
// Xvfb and most X servers answer a depth-24 root window with 32 bits per pixel, red in 0xff0000, in the
// client's byte order (little-endian here): B, G, R, X in memory. That case takes a fast path reading
// fixed byte offsets; other layouts (depth 16, odd masks, big-endian) go through the general path.

export interface PixelLayout {
  bitsPerPixel: number;
  /** Image byte order the server announced: 0 = LSBFirst, 1 = MSBFirst. */
  byteOrder: 0 | 1;
  /** Row padding in bits (a multiple of 8). */
  scanlinePad: number;
  redMask: number;
  greenMask: number;
  blueMask: number;
}

/** The pointer image from XFixesGetCursorImage: premultiplied ARGB, one little-endian uint32 each. */
export interface CursorImage {
  x: number;
  y: number;
  xhot: number;
  yhot: number;
  width: number;
  height: number;
  argb: Buffer;
}

/** Bytes per row of a ZPixmap image of `width` pixels. */
export function rowStride(width: number, layout: PixelLayout): number {
  const bits = width * layout.bitsPerPixel;
  return Math.ceil(bits / layout.scanlinePad) * (layout.scanlinePad / 8);
}

/** Packed RGB (3 bytes per pixel) from ZPixmap bytes. Throws on a layout it cannot read. */
export function zpixmapToRgb(data: Buffer, width: number, height: number, layout: PixelLayout): Buffer {
  const stride = rowStride(width, layout);
  if (data.length < stride * height) {
    throw new Error(`image data is ${data.length} bytes, expected ${stride * height} for ${width}x${height}`);
  }
  const offsets = byteOffsets(layout);
  if (offsets) return convertByteAligned(data, width, height, stride, offsets);
  return convertByMasks(data, width, height, stride, layout);
}

/** Byte offsets of R, G, B within a 32-bit pixel when each channel is one whole byte. */
function byteOffsets(layout: PixelLayout): [number, number, number] | undefined {
  if (layout.bitsPerPixel !== 32) return undefined;
  const offsets: number[] = [];
  for (const mask of [layout.redMask, layout.greenMask, layout.blueMask]) {
    const shift = maskShift(mask);
    if (mask >>> shift !== 0xff || shift % 8 !== 0) return undefined;
    offsets.push(layout.byteOrder === 0 ? shift / 8 : 3 - shift / 8);
  }
  return offsets as [number, number, number];
}

function convertByteAligned(
  data: Buffer,
  width: number,
  height: number,
  stride: number,
  offsets: number[],
): Buffer {
  const [r, g, b] = offsets;
  const out = Buffer.allocUnsafe(width * height * 3);
  let o = 0;
  for (let y = 0; y < height; y++) {
    const end = y * stride + width * 4;
    for (let i = y * stride; i < end; i += 4) {
      out[o++] = data[i + r];
      out[o++] = data[i + g];
      out[o++] = data[i + b];
    }
  }
  return out;
}

function convertByMasks(
  data: Buffer,
  width: number,
  height: number,
  stride: number,
  layout: PixelLayout,
): Buffer {
  const bytes = layout.bitsPerPixel / 8;
  if (![2, 3, 4].includes(bytes)) throw new Error(`unsupported ${layout.bitsPerPixel} bits per pixel`);
  const read = layout.byteOrder === 0 ? data.readUIntLE.bind(data) : data.readUIntBE.bind(data);
  const channels = [layout.redMask, layout.greenMask, layout.blueMask].map(channelReader);
  const out = Buffer.allocUnsafe(width * height * 3);
  let o = 0;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const pixel = read(y * stride + x * bytes, bytes);
      for (const channel of channels) out[o++] = channel(pixel);
    }
  }
  return out;
}

/** A function scaling the bits under `mask` to 0-255. */
function channelReader(mask: number): (pixel: number) => number {
  const shift = maskShift(mask);
  const max = mask >>> shift;
  if (max === 0) return () => 0;
  return (pixel) => Math.round((((pixel & mask) >>> shift) * 255) / max);
}

function maskShift(mask: number): number {
  if (mask === 0) return 0;
  let shift = 0;
  while (((mask >>> shift) & 1) === 0) shift++;
  return shift;
}

/** Draws the cursor over packed RGB in place, clipped to the image. */
export function drawCursor(rgb: Buffer, width: number, height: number, cursor: CursorImage): void {
  const left = cursor.x - cursor.xhot;
  const top = cursor.y - cursor.yhot;
  for (let cy = 0; cy < cursor.height; cy++) {
    const y = top + cy;
    if (y < 0 || y >= height) continue;
    for (let cx = 0; cx < cursor.width; cx++) {
      const x = left + cx;
      if (x < 0 || x >= width) continue;
      blendPixel(rgb, (y * width + x) * 3, cursor.argb.readUInt32LE((cy * cursor.width + cx) * 4));
    }
  }
}

/** Source-over with a premultiplied source: out = src + dst * (1 - alpha). */
function blendPixel(rgb: Buffer, at: number, argb: number): void {
  const alpha = argb >>> 24;
  if (alpha === 0) return;
  const keep = 255 - alpha;
  rgb[at] = Math.min(255, ((argb >>> 16) & 0xff) + Math.round((rgb[at] * keep) / 255));
  rgb[at + 1] = Math.min(255, ((argb >>> 8) & 0xff) + Math.round((rgb[at + 1] * keep) / 255));
  rgb[at + 2] = Math.min(255, (argb & 0xff) + Math.round((rgb[at + 2] * keep) / 255));
}

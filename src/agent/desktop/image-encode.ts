// Encodes captured pixels to PNG or JPEG with sharp (libvips), and tells which format a buffer really
// holds, so the service can label every image by its bytes rather than by what was asked for.
//
// PNG uses zlib level 1 without adaptive filtering: a desktop is mostly flat colour, which compresses
// well even at level 1, and the higher levels cost several times the time for a few percent of size.

import type { CaptureRequest, ImageFormat, Screenshot } from "./desktop-types.ts";
import { loadSharp } from "./native-modules.ts";

export interface RawImage {
  /** Tightly packed pixels, `channels` bytes each, rows top to bottom. */
  pixels: Buffer;
  width: number;
  height: number;
  channels: 3 | 4;
}

const PNG_COMPRESSION_LEVEL = 1;

/** Encodes raw pixels in the requested format. */
export async function encodeRaw(image: RawImage, request: CaptureRequest): Promise<Screenshot> {
  const { width, height, channels } = image;
  const sharp = await loadSharp();
  const input = sharp(image.pixels, { raw: { width, height, channels } });
  const output =
    request.format === "png"
      ? input.png({ compressionLevel: PNG_COMPRESSION_LEVEL, adaptiveFiltering: false })
      : input.jpeg({ quality: request.quality });
  return { data: await output.toBuffer(), format: request.format, width, height };
}

/** Re-encodes an already encoded image (from grim, or a clipboard) in `format`, unless it is already. */
export async function convertImage(data: Buffer, request: CaptureRequest): Promise<Screenshot> {
  const sharp = await loadSharp();
  const image = sharp(data);
  const meta = await image.metadata();
  const width = meta.width ?? 0;
  const height = meta.height ?? 0;
  if (sniffImageFormat(data) === request.format) return { data, format: request.format, width, height };
  const output =
    request.format === "png"
      ? image.png({ compressionLevel: PNG_COMPRESSION_LEVEL, adaptiveFiltering: false })
      : image.jpeg({ quality: request.quality });
  return { data: await output.toBuffer(), format: request.format, width, height };
}

/** Any image sharp can read, as PNG bytes. */
export async function toPng(data: Buffer): Promise<Buffer> {
  if (sniffImageFormat(data) === "png") return data;
  const sharp = await loadSharp();
  return sharp(data).png({ compressionLevel: PNG_COMPRESSION_LEVEL }).toBuffer();
}

const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
const JPEG_SIGNATURE = Buffer.from([0xff, 0xd8, 0xff]);

/** The format the bytes are in, from their signature; undefined for anything else. */
export function sniffImageFormat(data: Buffer): ImageFormat | undefined {
  if (data.subarray(0, PNG_SIGNATURE.length).equals(PNG_SIGNATURE)) return "png";
  if (data.subarray(0, JPEG_SIGNATURE.length).equals(JPEG_SIGNATURE)) return "jpeg";
  return undefined;
}

export const CONTENT_TYPES: Readonly<Record<ImageFormat, string>> = Object.freeze({
  png: "image/png",
  jpeg: "image/jpeg",
});

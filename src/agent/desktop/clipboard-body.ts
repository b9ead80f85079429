// The JSON shape of the clipboard on the wire, both ways: {"type":"text","data":"..."} or
// {"type":"image","data":"<base64 PNG>"}. Parsing is strict about what it uses (an image must be
// valid base64 of a PNG) and ignores fields it does not know.

import type { ClipboardContent } from "./desktop-types.ts";
import { BadRequestError, InvalidJsonError } from "./errors.ts";
import { sniffImageFormat } from "./image-encode.ts";

export interface ClipboardJson {
  type: "text" | "image";
  data: string;
}

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

/** The content a POST /clipboard body asks for; InvalidJsonError or BadRequestError otherwise. */
export function parseClipboardBody(body: Buffer): ClipboardContent {
  let value: unknown;
  try {
    value = JSON.parse(body.toString("utf8"));
  } catch (err) {
    throw new InvalidJsonError({ cause: err });
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new BadRequestError('the body must be an object {"type":"text"|"image","data":string}');
  }
  const { type, data } = value as Record<string, unknown>;
  if (typeof data !== "string") throw new BadRequestError("data must be a string");
  if (type === "text") return { type, data };
  if (type === "image") return { type, data: decodePng(data) };
  throw new BadRequestError('type must be "text" or "image"');
}

function decodePng(base64: string): Buffer {
  const compact = base64.replace(/\s+/g, "");
  const bytes = BASE64.test(compact) && compact.length % 4 === 0 ? Buffer.from(compact, "base64") : undefined;
  if (!bytes || sniffImageFormat(bytes) !== "png") {
    throw new BadRequestError("image data must be a base64-encoded PNG");
  }
  return bytes;
}

/** The wire form of clipboard content. */
export function clipboardToJson(content: ClipboardContent): ClipboardJson {
  if (content.type === "text") return { type: "text", data: content.data };
  return { type: "image", data: content.data.toString("base64") };
}

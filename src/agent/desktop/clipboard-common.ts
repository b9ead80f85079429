// What the xclip and wl-clipboard providers share: their options, the choice of which offered type to
// read (a PNG first, then any image sharp can turn into PNG, then text), and the check that a write
// took effect. Copy tools hand the selection to a forked child and exit; until that child has told the
// display server it owns the selection, a reader still gets the old content. So a write is confirmed by
// reading it back, retrying with jittered backoff until a deadline, instead of trusting the exit code.

import { setTimeout as delay } from "node:timers/promises";
import type { ClipboardContent } from "./desktop-types.ts";
import { ClipboardFailedError } from "./errors.ts";
import { toPng } from "./image-encode.ts";
import type { ToolResult } from "./run-tool.ts";

export interface ToolClipboardOptions {
  /** Environment for the tools: DISPLAY or WAYLAND_DISPLAY, PATH. */
  env: NodeJS.ProcessEnv;
  /** Deadline for each tool run, and for confirming a write. */
  timeoutMs: number;
  /** Most bytes read from the clipboard. */
  maxBytes: number;
  /** The tool's path or name, when it is not the usual one on PATH. */
  command?: string;
}

export const EMPTY_CLIPBOARD: ClipboardContent = Object.freeze({ type: "text", data: "" });

/** Image types tried in order; PNG is served as is, the others are converted to PNG. */
const IMAGE_TYPES = ["image/png", "image/jpeg", "image/webp", "image/gif", "image/tiff", "image/bmp"];

/** The image type to read from the offered `types`, if any. */
export function pickImageType(types: readonly string[]): string | undefined {
  return IMAGE_TYPES.find((type) => types.includes(type));
}

const FIRST_BACKOFF_MS = 5;
const MAX_BACKOFF_MS = 100;

/** Reads back until the clipboard holds `expected` or `timeoutMs` passes (see header). */
export async function confirmWrite(
  read: () => Promise<ClipboardContent>,
  expected: ClipboardContent,
  timeoutMs: number,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (let attempt = 0; ; attempt++) {
    if (sameContent(await read(), expected)) return;
    const wait = Math.random() * Math.min(MAX_BACKOFF_MS, FIRST_BACKOFF_MS * 2 ** attempt);
    if (Date.now() + wait > deadline) break;
    await delay(wait);
  }
  throw new ClipboardFailedError(`the new content was not on the clipboard after ${timeoutMs} ms`);
}

function sameContent(actual: ClipboardContent, expected: ClipboardContent): boolean {
  if (actual.type !== expected.type) return false;
  if (actual.type === "text") return actual.data === expected.data;
  return Buffer.isBuffer(expected.data) && actual.data.equals(expected.data);
}

/** Clipboard image bytes of any type sharp reads, as PNG. */
export async function clipboardPng(bytes: Buffer): Promise<Buffer> {
  try {
    return await toPng(bytes);
  } catch (err) {
    throw new ClipboardFailedError("the clipboard image could not be converted to PNG", { cause: err });
  }
}

/** The error for a tool that exited with a failure, with what it said. */
export function toolFailure(what: string, result: ToolResult): ClipboardFailedError {
  const detail = result.stderr || (result.code === null ? "killed by a signal" : `exit code ${result.code}`);
  return new ClipboardFailedError(`${what}: ${detail}`);
}

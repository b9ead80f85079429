// The X11 clipboard through xclip (`-selection clipboard`). Reading asks for TARGETS first so an image
// is returned as an image (PNG preferred); writing pipes the content to `xclip -i`, which forks a child
// that owns the selection until another client takes it (or the X server goes away). That child
// outlives the request by design; run-tool.ts makes sure it does not hold the request open.

import {
  clipboardPng,
  confirmWrite,
  EMPTY_CLIPBOARD,
  pickImageType,
  type ToolClipboardOptions,
  toolFailure,
} from "./clipboard-common.ts";
import type { Clipboard, ClipboardContent } from "./desktop-types.ts";
import { ClipboardFailedError, NoDisplayError } from "./errors.ts";
import { runTool, type ToolResult } from "./run-tool.ts";

const SELECTION = ["-selection", "clipboard"];
/** Text targets, best first. */
const TEXT_TARGETS = ["UTF8_STRING", "text/plain;charset=utf-8", "STRING", "TEXT", "text/plain"];
/** xclip's complaint when nobody owns the selection or the owner lacks the target: an empty clipboard. */
const NOT_AVAILABLE = /target .* not available/i;

export class X11Clipboard implements Clipboard {
  readonly name = "xclip";
  readonly #options: ToolClipboardOptions;

  constructor(options: ToolClipboardOptions) {
    this.#options = options;
  }

  async read(): Promise<ClipboardContent> {
    const targets = await this.#targets();
    const imageTarget = pickImageType(targets);
    if (imageTarget) {
      const bytes = await this.#output(imageTarget);
      if (bytes) return { type: "image", data: await clipboardPng(bytes) };
    }
    const textTarget = TEXT_TARGETS.find((target) => targets.includes(target));
    if (!textTarget) return EMPTY_CLIPBOARD;
    const text = await this.#output(textTarget);
    return { type: "text", data: text?.toString("utf8") ?? "" };
  }

  async write(content: ClipboardContent): Promise<void> {
    const typeArgs = content.type === "image" ? ["-t", "image/png"] : [];
    const data = content.type === "image" ? content.data : Buffer.from(content.data, "utf8");
    const result = await this.#run([...SELECTION, "-i", ...typeArgs], { input: data, detaches: true });
    if (result.code !== 0) throw xclipFailure("xclip -i", result);
    await confirmWrite(() => this.read(), content, this.#options.timeoutMs);
  }

  /** The targets the selection owner offers; none when nobody owns it. */
  async #targets(): Promise<string[]> {
    const bytes = await this.#output("TARGETS");
    if (!bytes) return [];
    return bytes
      .toString("utf8")
      .split("\n")
      .map((line) => line.trim())
      .filter(Boolean);
  }

  /** The selection converted to `target`, or undefined when it is not available. */
  async #output(target: string): Promise<Buffer | undefined> {
    const result = await this.#run([...SELECTION, "-o", "-t", target], {});
    if (result.code === 0) return result.stdout;
    if (NOT_AVAILABLE.test(result.stderr)) return undefined;
    throw xclipFailure(`xclip -o -t ${target}`, result);
  }

  async #run(args: string[], extra: { input?: Buffer; detaches?: boolean }): Promise<ToolResult> {
    const { env, timeoutMs, maxBytes, command = "xclip" } = this.#options;
    try {
      return await runTool({ command, args, env, timeoutMs, maxOutputBytes: maxBytes, ...extra });
    } catch (err) {
      throw new ClipboardFailedError((err as Error).message, { cause: err });
    }
  }
}

/** xclip's complaint when the X server cannot be reached. */
const NO_DISPLAY = /can't open display/i;

function xclipFailure(what: string, result: ToolResult): ClipboardFailedError | NoDisplayError {
  if (NO_DISPLAY.test(result.stderr)) return new NoDisplayError({ cause: new Error(result.stderr) });
  return toolFailure(what, result);
}

// The Wayland clipboard through wl-clipboard: `wl-paste --list-types` to see what is offered (an image
// is returned as an image, PNG preferred), `wl-paste --type T` to read, and `wl-copy --type T` to write.
// Like xclip, wl-copy forks a child that serves the selection after wl-copy exits; run-tool.ts keeps
// that child from holding the request open, and the write is confirmed by reading it back.

import {
  clipboardPng,
  confirmWrite,
  EMPTY_CLIPBOARD,
  pickImageType,
  type ToolClipboardOptions,
  toolFailure,
} from "./clipboard-common.ts";
import type { Clipboard, ClipboardContent } from "./desktop-types.ts";
import { ClipboardFailedError } from "./errors.ts";
import { runTool, type ToolResult } from "./run-tool.ts";

const TEXT_TYPE = "text/plain;charset=utf-8";
/** What wl-paste says when the clipboard is empty or lacks the type: not a failure. */
const NOTHING = /nothing is copied|no selection|no suitable type/i;

export interface WaylandClipboardOptions extends ToolClipboardOptions {
  /** wl-copy's path or name when it is not on PATH; `command` is wl-paste's. */
  copyCommand?: string;
}

export class WaylandClipboard implements Clipboard {
  readonly name = "wl-clipboard";
  readonly #options: WaylandClipboardOptions;

  constructor(options: WaylandClipboardOptions) {
    this.#options = options;
  }

  async read(): Promise<ClipboardContent> {
    const listed = await this.#paste(["--list-types"]);
    if (!listed) return EMPTY_CLIPBOARD;
    const types = listed
      .toString("utf8")
      .split("\n")
      .map((line) => line.trim());
    const imageType = pickImageType(types);
    if (imageType) {
      const bytes = await this.#paste(["--type", imageType]);
      if (bytes) return { type: "image", data: await clipboardPng(bytes) };
    }
    const text = await this.#paste(["--no-newline", "--type", "text"]);
    return text ? { type: "text", data: text.toString("utf8") } : EMPTY_CLIPBOARD;
  }

  async write(content: ClipboardContent): Promise<void> {
    const type = content.type === "image" ? "image/png" : TEXT_TYPE;
    const data = content.type === "image" ? content.data : Buffer.from(content.data, "utf8");
    const command = this.#options.copyCommand ?? "wl-copy";
    const result = await this.#run(command, ["--type", type], { input: data, detaches: true });
    if (result.code !== 0) throw toolFailure(command, result);
    await confirmWrite(() => this.read(), content, this.#options.timeoutMs);
  }

  /** wl-paste's output, or undefined when there is nothing (of that type) to paste. */
  async #paste(args: string[]): Promise<Buffer | undefined> {
    const command = this.#options.command ?? "wl-paste";
    const result = await this.#run(command, args, {});
    if (result.code === 0) return result.stdout;
    if (NOTHING.test(result.stderr)) return undefined;
    throw toolFailure(`${command} ${args.join(" ")}`, result);
  }

  async #run(
    command: string,
    args: string[],
    extra: { input?: Buffer; detaches?: boolean },
  ): Promise<ToolResult> {
    const { env, timeoutMs, maxBytes } = this.#options;
    try {
      return await runTool({ command, args, env, timeoutMs, maxOutputBytes: maxBytes, ...extra });
    } catch (err) {
      throw new ClipboardFailedError((err as Error).message, { cause: err });
    }
  }
}

// The Wayland providers against stand-in grim, wl-paste and wl-copy scripts (no compositor here): the
// arguments they are run with, an image re-encoded when the tool's bytes are not the format asked for
// (the Content-Type stays true to the bytes), and the clipboard round trip with a detaching wl-copy.

import assert from "node:assert/strict";
import { chmod, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import sharp from "sharp";
import { WaylandClipboard } from "../../../src/agent/desktop/clipboard-wayland.ts";
import { createDesktopService, type DesktopService } from "../../../src/agent/desktop/desktop-service.ts";
import { WaylandCapture } from "../../../src/agent/desktop/wayland-capture.ts";

const GRIM = `#!/bin/sh
echo "$@" > "$FAKE_DIR/grim.args"
cat "$FAKE_DIR/screen.png"
`;
const WL_COPY = `#!/bin/sh
echo "$@" > "$FAKE_DIR/copy.args"
cat > "$FAKE_DIR/data"
echo "$2" > "$FAKE_DIR/type"
# like the real wl-copy: a child keeps serving (and holds stdout and stderr) after wl-copy exits
sleep 30 &
echo $! >> "$FAKE_DIR/children"
`;
const WL_PASTE = `#!/bin/sh
if [ ! -f "$FAKE_DIR/data" ]; then echo "Nothing is copied" >&2; exit 1; fi
if [ "$1" = "--list-types" ]; then cat "$FAKE_DIR/type"; exit 0; fi
cat "$FAKE_DIR/data"
`;

describe("Wayland providers with stand-in tools", () => {
  let dir: string;
  let service: DesktopService;
  let base: string;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "revdial-wayland-"));
    for (const [name, text] of [
      ["grim", GRIM],
      ["wl-copy", WL_COPY],
      ["wl-paste", WL_PASTE],
    ]) {
      await writeFile(join(dir, name), text);
      await chmod(join(dir, name), 0o755);
    }
    await sharp({ create: { width: 40, height: 30, channels: 3, background: "#00ff00" } })
      .png()
      .toFile(join(dir, "screen.png"));
    const env = { FAKE_DIR: dir, WAYLAND_DISPLAY: "wayland-test" };
    const options = { env, timeoutMs: 5000, maxBytes: 1 << 20 };
    service = createDesktopService({
      listen: "127.0.0.1:0",
      env,
      providers: {
        capture: new WaylandCapture({ env, timeoutMs: 5000, command: join(dir, "grim") }),
        clipboard: new WaylandClipboard({
          ...options,
          command: join(dir, "wl-paste"),
          copyCommand: join(dir, "wl-copy"),
        }),
      },
    });
    base = `http://127.0.0.1:${(await service.listen()).port}`;
  });

  after(async () => {
    await service?.close();
    const children = await readFile(join(dir, "children"), "utf8").catch(() => "");
    for (const pid of children.split("\n").filter(Boolean)) {
      try {
        process.kill(Number(pid), "SIGKILL");
      } catch {}
    }
    await rm(dir, { recursive: true, force: true });
  });

  test("PNG comes from grim as is, with -t png and stdout as output", async () => {
    const res = await fetch(`${base}/screenshot?format=png&include_cursor=true`);
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("content-type"), "image/png");
    const bytes = Buffer.from(await res.arrayBuffer());
    assert.ok(bytes.equals(await readFile(join(dir, "screen.png"))));
    assert.equal((await readFile(join(dir, "grim.args"), "utf8")).trim(), "-t png -l 1 -c -");
  });

  test("JPEG asked, PNG returned by the tool: re-encoded, labelled by its bytes", async () => {
    const res = await fetch(`${base}/screenshot?format=jpeg&quality=70`);
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("content-type"), "image/jpeg");
    const meta = await sharp(Buffer.from(await res.arrayBuffer())).metadata();
    assert.deepEqual([meta.format, meta.width, meta.height], ["jpeg", 40, 30]);
    assert.equal((await readFile(join(dir, "grim.args"), "utf8")).trim(), "-t jpeg -q 70 -");
  });

  test("empty clipboard, then text and image round trips through wl-copy/wl-paste", async () => {
    assert.deepEqual(await (await fetch(`${base}/clipboard`)).json(), { type: "text", data: "" });
    const post = (body: unknown) =>
      fetch(`${base}/clipboard`, { method: "POST", body: JSON.stringify(body) });
    assert.equal((await post({ type: "text", data: "wayland ✓" })).status, 204);
    assert.equal(await readFile(join(dir, "data"), "utf8"), "wayland ✓");
    assert.deepEqual(await (await fetch(`${base}/clipboard`)).json(), { type: "text", data: "wayland ✓" });
    const png = (await readFile(join(dir, "screen.png"))).toString("base64");
    assert.equal((await post({ type: "image", data: png })).status, 204);
    assert.equal((await readFile(join(dir, "copy.args"), "utf8")).trim(), "--type image/png");
    assert.deepEqual(await (await fetch(`${base}/clipboard`)).json(), { type: "image", data: png });
  });

  test("/health names the Wayland providers", async () => {
    assert.equal(
      await (await fetch(`${base}/health`)).text(),
      "OK screenshot=wayland clipboard=wl-clipboard",
    );
  });
});

// The screenshot query and the clipboard body, parsed without a server.

import assert from "node:assert/strict";
import { test } from "node:test";
import { clipboardToJson, parseClipboardBody } from "../../../src/agent/desktop/clipboard-body.ts";
import { parseScreenshotQuery } from "../../../src/agent/desktop/screenshot-query.ts";

const query = (text: string) => parseScreenshotQuery(new URLSearchParams(text));
const PNG_HEADER = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 0]);

test("screenshot defaults: png, quality 80, no cursor", () => {
  assert.deepEqual(query(""), { format: "png", quality: 80, includeCursor: false });
});

test("screenshot parameters are read", () => {
  assert.deepEqual(query("format=jpeg&quality=1&include_cursor=true"), {
    format: "jpeg",
    quality: 1,
    includeCursor: true,
  });
  assert.deepEqual(query("quality=100&include_cursor=false&other=x"), {
    format: "png",
    quality: 100,
    includeCursor: false,
  });
});

test("bad screenshot parameters name themselves", () => {
  for (const [text, name] of [
    ["format=jpg", "format"],
    ["format=", "format"],
    ["quality=1.5", "quality"],
    ["quality=-1", "quality"],
    ["quality=0100", "quality"],
    ["include_cursor=1", "include_cursor"],
  ]) {
    assert.throws(
      () => query(text),
      (err: Error & { code?: string }) => {
        assert.equal(err.code, "RD_ERR_DESKTOP_BAD_REQUEST");
        assert.match(err.message, new RegExp(name));
        return true;
      },
    );
  }
});

test("clipboard text body", () => {
  assert.deepEqual(parseClipboardBody(Buffer.from('{"type":"text","data":"hi","extra":1}')), {
    type: "text",
    data: "hi",
  });
});

test("clipboard image body decodes base64 PNG, whitespace allowed", () => {
  const b64 = PNG_HEADER.toString("base64");
  const content = parseClipboardBody(
    Buffer.from(JSON.stringify({ type: "image", data: `${b64.slice(0, 4)}\n${b64.slice(4)}` })),
  );
  assert.equal(content.type, "image");
  assert.ok(Buffer.isBuffer(content.data) && content.data.equals(PNG_HEADER));
  assert.deepEqual(clipboardToJson(content), { type: "image", data: b64 });
});

test("clipboard body errors carry their codes", () => {
  const code = (body: string) => {
    try {
      parseClipboardBody(Buffer.from(body));
    } catch (err) {
      return (err as { code: string; message: string }).code;
    }
    return "none";
  };
  assert.equal(code(""), "RD_ERR_DESKTOP_INVALID_JSON");
  assert.equal(code("nul"), "RD_ERR_DESKTOP_INVALID_JSON");
  assert.equal(code("null"), "RD_ERR_DESKTOP_BAD_REQUEST");
  assert.equal(code('{"type":"image","data":"aGVsbG8="}'), "RD_ERR_DESKTOP_BAD_REQUEST");
  assert.equal(code('{"type":"image","data":"abc"}'), "RD_ERR_DESKTOP_BAD_REQUEST");
});

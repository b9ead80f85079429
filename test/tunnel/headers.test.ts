// The header rule every hop applies (copyEndToEnd), on values: hop-by-hop headers, every header the
// Connection header names (any case, any spacing, repeated), Proxy-Authorization and
// Proxy-Authenticate, pseudo-headers and the tunnel's own body framing header never cross;
// end-to-end headers do, lower-cased, with their values untouched.

import assert from "node:assert/strict";
import { test } from "node:test";
import { connectionTokens, copyEndToEnd } from "../../src/tunnel/headers.ts";

test("hop-by-hop headers and those named in Connection are dropped; end-to-end ones kept", () => {
  const out = copyEndToEnd({
    Connection: "Keep-Alive,  X-Secret ,x-other",
    "Keep-Alive": "timeout=5",
    "Proxy-Connection": "keep-alive",
    TE: "trailers",
    Trailer: "x-later",
    "Transfer-Encoding": "chunked",
    Upgrade: "websocket",
    "Proxy-Authorization": "Basic c2VjcmV0",
    "Proxy-Authenticate": "Basic",
    Host: "inside",
    "HTTP2-Settings": "AAA",
    "X-Secret": "named in Connection",
    "x-other": "also named",
    ":path": "/pseudo",
    "revdial-body-end": "trailer",
    "Content-Type": "image/png",
    "Set-Cookie": ["a=1", "b=2"],
    "X-Kept": "yes",
    "x-unset": undefined,
  });
  assert.deepEqual(out, { "content-type": "image/png", "set-cookie": ["a=1", "b=2"], "x-kept": "yes" });
});

test("a Connection header given as a list of values names headers in every value", () => {
  assert.deepEqual([...connectionTokens(["close", "X-A, x-b"])], ["close", "x-a", "x-b"]);
  assert.deepEqual(copyEndToEnd({ connection: ["x-a", "X-B"], "x-a": "1", "x-b": "2", "x-c": "3" }), {
    "x-c": "3",
  });
});

test("headers copy into the given object, which keeps what it had", () => {
  const into: Record<string, string | string[] | number | undefined> = {
    ":status": 200,
    connection: "close",
  };
  copyEndToEnd({ "x-a": "1", connection: "x-a" }, into);
  assert.deepEqual(into, { ":status": 200, connection: "close" });
  assert.deepEqual(copyEndToEnd(undefined), {});
});

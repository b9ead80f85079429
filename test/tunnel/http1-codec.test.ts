// The HTTP/1.1 codec of the API's own clients (v3 streams and v1 data connections), on bytes: the request head (what reaches the target,
// and what a caller may not inject), and the response reader fed every answer both whole and one
// byte at a time (a data connection splits bytes anywhere): chunked, Content-Length, to the end of
// the connection, HEAD/204/304 without a body, interim 1xx skipped, repeated headers, and the
// bounds (a head past 64 KiB, a bad chunk size, a connection that ends early).

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { Http1ResponseParser, MAX_HEAD, type ResponseHead } from "../../src/api/tunnel/http1-parser.ts";
import { chunkFrame, LAST_CHUNK, requestHead } from "../../src/api/tunnel/http1-request.ts";

/** The head as a v1 data connection sends it: one exchange, the Go client's address as Host. */
function v1Head(
  ...args: [string, string, Record<string, string | string[]>, Parameters<typeof requestHead>[3]]
) {
  return requestHead(...args, { host: "localhost:9876", keepAlive: false });
}

describe("the request head", () => {
  test("method, path, host and Connection: close, the headers, and the body's framing", () => {
    const head = v1Head(
      "POST",
      "/a?b=1",
      { "x-one": "1", "set-thing": ["a", "b"] },
      { framing: "length", length: 5 },
    );
    assert.equal(
      head,
      "POST /a?b=1 HTTP/1.1\r\nhost: localhost:9876\r\nconnection: close\r\nx-one: 1\r\nset-thing: a\r\n" +
        "set-thing: b\r\ncontent-length: 5\r\n\r\n",
    );
    assert.match(
      v1Head("PUT", "/", {}, { framing: "chunked" }) as string,
      /transfer-encoding: chunked\r\n\r\n$/,
    );
    assert.match(v1Head("POST", "/", {}, { framing: "none" }) as string, /content-length: 0\r\n\r\n$/);
    assert.doesNotMatch(v1Head("GET", "/", {}, { framing: "none" }) as string, /content-length/);
  });

  test("on a v3 stream: the agent's Host and no Connection: close (the connection is kept)", () => {
    assert.equal(
      requestHead("GET", "/x", {}, { framing: "none" }, { host: "127.0.0.1:9876", keepAlive: true }),
      "GET /x HTTP/1.1\r\nhost: 127.0.0.1:9876\r\n\r\n",
    );
  });

  test("a caller's Content-Length is kept only for a body of that length", () => {
    assert.match(
      v1Head("POST", "/", { "content-length": "3" }, { framing: "length" }) as string,
      /content-length: 3\r\n\r\n$/,
    );
    assert.doesNotMatch(
      v1Head("POST", "/", { "content-length": "3" }, { framing: "chunked" }) as string,
      /content-length/,
    );
  });

  test("a body given whole sends its own length, whatever the caller's Content-Length said", () => {
    const head = v1Head("POST", "/", { "Content-Length": "99" }, { framing: "length", length: 5 }) as string;
    assert.match(head, /content-length: 5\r\n\r\n$/);
    assert.equal(head.match(/content-length/gi)?.length, 1, head);
    // A streamed body declared by the caller keeps that length, once, whatever its key's case.
    const streamed = v1Head("POST", "/", { "Content-Length": "7" }, { framing: "length" }) as string;
    assert.equal(streamed.match(/content-length: 7\r\n/gi)?.length, 1, streamed);
    assert.equal(streamed.match(/content-length/gi)?.length, 1, streamed);
  });

  test("only end-to-end headers are sent, names lower-cased, and none that `drop` names", () => {
    const head = requestHead(
      "GET",
      "/",
      {
        Connection: "keep-alive, X-Hop",
        "X-Hop": "1",
        "Keep-Alive": "timeout=5",
        "Transfer-Encoding": "chunked",
        Upgrade: "h2c",
        "Proxy-Authorization": "Basic x",
        Host: "evil.example",
        "revdial-body-end": "trailer",
        Expect: "100-continue",
        "X-Kept": "2",
      },
      { framing: "none" },
      { host: "127.0.0.1:1", keepAlive: true },
      new Set(["expect"]),
    );
    assert.equal(head, "GET / HTTP/1.1\r\nhost: 127.0.0.1:1\r\nx-kept: 2\r\n\r\n");
  });

  test("line breaks in a header value, a bad header name, method or path are refused", () => {
    for (const bad of [
      v1Head("GET", "/", { "x-a": "v\r\nx-injected: 1" }, { framing: "none" }),
      v1Head("GET", "/", { "bad name": "v" }, { framing: "none" }),
      v1Head("GE T", "/", {}, { framing: "none" }),
      v1Head("GET", "/a b", {}, { framing: "none" }),
      v1Head("GET", "no-slash", {}, { framing: "none" }),
    ])
      assert.ok(bad instanceof Error);
  });

  test("chunk frames", () => {
    assert.equal(chunkFrame(Buffer.from("hello world!!")).toString(), "d\r\nhello world!!\r\n");
    assert.equal(LAST_CHUNK.toString(), "0\r\n\r\n");
  });
});

interface Read {
  head: ResponseHead | null;
  body: string;
  ended: boolean;
  error: string | null;
}

/** Feeds `bytes` to a reader (whole, or byte by byte), then the connection's end when `eof`. */
function read(method: string, bytes: string, split: boolean, eof = true): Read {
  const out: Read = { head: null, body: "", ended: false, error: null };
  const reader = new Http1ResponseParser(
    {
      head: (h) => {
        assert.equal(out.head, null, "one head");
        out.head = h;
      },
      body: (c) => {
        out.body += c.toString("latin1");
      },
      complete: () => {
        assert.equal(out.ended, false, "one end");
        out.ended = true;
      },
      error: (message) => {
        out.error ??= message;
      },
    },
    method === "HEAD",
  );
  const buffer = Buffer.from(bytes, "latin1");
  if (split) for (let i = 0; i < buffer.length; i++) reader.push(buffer.subarray(i, i + 1));
  else reader.push(buffer);
  if (eof) reader.end();
  return out;
}

function bothWays(method: string, bytes: string, eof: boolean, check: (r: Read) => void): void {
  check(read(method, bytes, false, eof));
  check(read(method, bytes, true, eof));
}

describe("the response reader", () => {
  test("Content-Length: exactly that many bytes, done before the connection ends", () => {
    bothWays("GET", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhelloEXTRA", false, (r) => {
      assert.equal(r.head?.status, 200);
      assert.equal(r.head?.headers["x-a"], "1");
      assert.equal(r.body, "hello");
      assert.equal(r.ended, true);
    });
  });

  test("chunked: decoded, extensions and trailers read and dropped", () => {
    const bytes =
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n";
    bothWays("GET", bytes, false, (r) => {
      assert.equal(r.body, "hello world");
      assert.equal(r.ended, true);
      assert.equal(r.error, null);
    });
  });

  test("no length: the body runs until the connection ends", () => {
    bothWays("GET", "HTTP/1.0 200 OK\r\n\r\nuntil the end", true, (r) => {
      assert.equal(r.body, "until the end");
      assert.equal(r.ended, true);
    });
    assert.equal(read("GET", "HTTP/1.0 200 OK\r\n\r\nnot yet", false, false).ended, false);
  });

  test("HEAD, 204 and 304 have no body whatever their headers say", () => {
    for (const [method, status] of [
      ["HEAD", 200],
      ["GET", 204],
      ["GET", 304],
    ] as const) {
      bothWays(method, `HTTP/1.1 ${status} X\r\nContent-Length: 10\r\n\r\n`, false, (r) => {
        assert.equal(r.head?.status, status);
        assert.equal(r.body, "");
        assert.equal(r.ended, true);
      });
    }
  });

  test("interim 1xx answers are skipped; repeated headers are joined, set-cookie kept a list", () => {
    const bytes =
      "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" +
      "HTTP/1.1 201 Created\r\nVary: a\r\nVary: b\r\nSet-Cookie: x=1\r\nSet-Cookie: y=2\r\nContent-Length: 0\r\n\r\n";
    bothWays("POST", bytes, false, (r) => {
      assert.equal(r.head?.status, 201);
      assert.equal(r.head?.headers.vary, "a, b");
      assert.deepEqual(r.head?.headers["set-cookie"], ["x=1", "y=2"]);
      assert.equal(r.head?.headers.link, undefined);
      assert.equal(r.ended, true);
    });
  });

  test("faults: a bad status line, a bad chunk size, conflicting lengths, an early end, a head too large", () => {
    const faults = [
      ["SSH-2.0-OpenSSH\r\n\r\n", /invalid status line/],
      ["HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", /invalid chunk size/],
      ["HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", /conflicting Content-Length/],
      ["HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", /invalid Content-Length/],
      ["HTTP/1.1 200 OK\r\n folded\r\n\r\n", /invalid header/],
      ["HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", /ended in the middle of the body/],
      ["HTTP/1.1 200 OK\r\nContent-", /ended before the response head/],
      [`HTTP/1.1 200 OK\r\nX-Big: ${"a".repeat(MAX_HEAD)}\r\n\r\n`, /response head too large/],
    ] as const;
    for (const [bytes, message] of faults) {
      const r = read("GET", bytes, false, true);
      assert.match(r.error ?? "", message, bytes.slice(0, 40));
      assert.equal(r.ended, false);
    }
  });
});

// The API's HTTP/1.1 response parser for v3 streams (src/api/tunnel/http1-parser.ts), on bytes.
// Proves: Content-Length and chunked bodies (with chunk extensions and trailers) come out the same
// split at every byte boundary; close-delimited bodies complete on end(); 100 Continue and 103 Early
// Hints are skipped and 101 is an error; HEAD, 204 and 304 have no body whatever the headers say;
// Transfer-Encoding beats Content-Length (which is dropped); differing Content-Lengths are an error
// (response splitting); repeated headers become arrays; the keep-alive rules of HTTP/1.1 and 1.0;
// a head over 64 KiB and a body cut short are errors, each reported once with nothing after it.

import assert from "node:assert/strict";
import { test } from "node:test";
import { Http1ResponseParser, MAX_HEAD, type ResponseHead } from "../../src/api/tunnel/http1-parser.ts";

interface Outcome {
  heads: ResponseHead[];
  body: string;
  completed: number;
  errors: string[];
  /** Bytes came past the complete answer. */
  overrun: boolean;
  /** The order of what came: "head", "body", "complete", "error". */
  order: string[];
}

function parse(
  bytes: Buffer | string,
  options: { isHead?: boolean; at?: number[]; end?: boolean } = {},
): Outcome {
  const out: Outcome = { heads: [], body: "", completed: 0, errors: [], overrun: false, order: [] };
  const parser = new Http1ResponseParser(
    {
      head: (h) => {
        out.heads.push(structuredClone(h));
        out.order.push("head");
      },
      body: (chunk) => {
        out.body += chunk.toString("latin1");
        if (out.order.at(-1) !== "body") out.order.push("body");
      },
      complete: () => {
        out.completed++;
        out.order.push("complete");
      },
      error: (message) => {
        out.errors.push(message);
        out.order.push("error");
      },
    },
    options.isHead ?? false,
  );
  const b = typeof bytes === "string" ? Buffer.from(bytes, "latin1") : bytes;
  let from = 0;
  for (const to of options.at ?? []) {
    parser.push(b.subarray(from, to));
    from = to;
  }
  parser.push(b.subarray(from));
  if (options.end) parser.end();
  out.overrun = parser.overrun;
  return out;
}

/** Every split in two, and one byte at a time, gives `want`. */
function everySplit(
  bytes: string,
  want: (o: Outcome, how: string) => void,
  options: { end?: boolean; isHead?: boolean } = {},
): void {
  want(parse(bytes, options), "whole");
  for (let at = 0; at <= bytes.length; at++) want(parse(bytes, { ...options, at: [at] }), `split at ${at}`);
  const one = Array.from({ length: bytes.length }, (_, i) => i + 1);
  want(parse(bytes, { ...options, at: one }), "one byte at a time");
}

test("a Content-Length body, split at every byte boundary, is the same and completes once", () => {
  const body = "hello, \r\n\r\nworld: 0\r\n";
  const res = `HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: ${body.length}\r\n\r\n${body}`;
  everySplit(res, (o, how) => {
    assert.deepEqual(o.errors, [], how);
    assert.equal(o.heads.length, 1, how);
    assert.equal(o.heads[0].status, 200);
    assert.equal(o.heads[0].statusMessage, "OK");
    assert.equal(o.heads[0].bodyKind, "length");
    assert.equal(o.heads[0].headers["content-type"], "text/plain");
    assert.equal(o.heads[0].headers["content-length"], String(body.length));
    assert.equal(o.heads[0].keepAlive, true);
    assert.equal(o.body, body, how);
    assert.equal(o.completed, 1, how);
    assert.deepEqual(o.order, ["head", "body", "complete"], how);
  });
});

test("Content-Length: 0 completes with the head; bytes after a complete answer mark it overrun, not an error", () => {
  const o = parse("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
  assert.deepEqual(o.order, ["head", "complete"]);
  const extra = parse("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA");
  assert.equal(extra.body, "ok");
  assert.deepEqual(extra.order, ["head", "body", "complete"]);
  assert.deepEqual(extra.errors, []);
  assert.equal(extra.overrun, true, "the connection is not to be reused");
});

test("a chunked body with chunk extensions and trailers, split at every byte boundary, is the same", () => {
  const res =
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n" +
    "5;name=value\r\nhello\r\n" +
    '1A ; quoted="a;b"\r\n' +
    "abcdefghijklmnopqrstuvwxyz\r\n" +
    "2\r\n\r\n\r\n" + // a chunk whose data is CRLF
    "0;last\r\nx-checksum: 1234\r\nx-other: y\r\n\r\n";
  everySplit(res, (o, how) => {
    assert.deepEqual(o.errors, [], how);
    assert.equal(o.heads[0].bodyKind, "chunked", how);
    assert.equal(o.heads[0].keepAlive, true, how);
    assert.equal(o.body, "helloabcdefghijklmnopqrstuvwxyz\r\n", how);
    assert.equal(o.completed, 1, how);
    assert.equal(o.order.at(-1), "complete", how);
  });
});

test("chunked framing errors: a bad size line, missing CRLF after the data, an over-long line", () => {
  for (const [what, body] of [
    ["a size that is not hex", "zz\r\nab\r\n0\r\n\r\n"],
    ["no CRLF after the data", "2\r\nabXY0\r\n\r\n"],
    ["a size line over 8 KiB", `1;${"e".repeat(9000)}\r\n`],
    ["a negative size", "-1\r\n"],
  ]) {
    const o = parse(`HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n${body}`);
    assert.equal(o.errors.length, 1, what);
    assert.equal(o.order.at(-1), "error", `${what}: nothing after the error`);
    assert.equal(o.completed, 0, what);
  }
});

test("a close-delimited body (no length, not chunked) completes on end(), and the connection is not reused", () => {
  const res =
    "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\nall of this \r\n\r\n until the end";
  everySplit(
    res,
    (o, how) => {
      assert.deepEqual(o.errors, [], how);
      assert.equal(o.heads[0].bodyKind, "close", how);
      assert.equal(o.heads[0].keepAlive, false, how);
      assert.equal(o.body, "all of this \r\n\r\n until the end", how);
      assert.equal(o.completed, 1, how);
    },
    { end: true },
  );
  const open = parse(res);
  assert.equal(open.completed, 0, "without end() the body is not complete");
});

test("an unknown transfer coding is close-delimited, and its Content-Length dropped", () => {
  const o = parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 3\r\n\r\nabcdef", {
    end: true,
  });
  assert.equal(o.heads[0].bodyKind, "close");
  assert.equal(o.heads[0].keepAlive, false);
  assert.equal(o.heads[0].headers["content-length"], undefined);
  assert.equal(o.body, "abcdef");
  assert.equal(o.completed, 1);
});

test("100 Continue and 103 Early Hints are skipped: the final answer is the one handed on", () => {
  const res =
    "HTTP/1.1 100 Continue\r\n\r\n" +
    "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n" +
    "HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok";
  everySplit(res, (o, how) => {
    assert.deepEqual(o.errors, [], how);
    assert.equal(o.heads.length, 1, how);
    assert.equal(o.heads[0].status, 201, how);
    assert.equal(o.heads[0].headers.link, undefined, `${how}: the 103's headers are not the answer's`);
    assert.equal(o.body, "ok", how);
  });
});

test("101 Switching Protocols is an error (no upgrades on a plain request)", () => {
  const o = parse("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nxyz");
  assert.deepEqual(o.order, ["error"]);
  assert.match(o.errors[0], /switched protocols/);
});

test("HEAD, 204 and 304 have no body whatever their headers say; the connection stays reusable", () => {
  const cases: Array<[string, string, boolean]> = [
    ["HEAD", "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", true],
    ["HEAD chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", true],
    ["204", "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", false],
    ["304", 'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\nContent-Length: 1000\r\n\r\n', false],
    ["204 without headers", "HTTP/1.1 204 No Content\r\n\r\n", false],
  ];
  for (const [what, res, isHead] of cases) {
    everySplit(
      res,
      (o, how) => {
        assert.deepEqual(o.errors, [], `${what}, ${how}`);
        assert.deepEqual(o.order, ["head", "complete"], `${what}, ${how}`);
        assert.equal(o.heads[0].bodyKind, "none", what);
        assert.equal(o.heads[0].keepAlive, true, what);
      },
      { isHead },
    );
  }
  // The next answer on the connection is not taken for the HEAD's body.
  const o = parse("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n", { isHead: true });
  assert.equal(o.body, "");
});

test("Transfer-Encoding with Content-Length: chunked wins and Content-Length is dropped", () => {
  const res =
    "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
  everySplit(res, (o, how) => {
    assert.deepEqual(o.errors, [], how);
    assert.equal(o.heads[0].bodyKind, "chunked");
    assert.equal(o.heads[0].headers["content-length"], undefined, `${how}: Content-Length dropped`);
    assert.equal(o.body, "abc", how);
    assert.equal(o.completed, 1, how);
  });
});

test("differing Content-Lengths are an error; repeated equal ones are one", () => {
  for (const res of [
    "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello!",
    "HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n",
    "HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n",
    "HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
    "HTTP/1.1 200 OK\r\nContent-Length: 1 0\r\n\r\n",
    "HTTP/1.1 200 OK\r\nContent-Length: 5,\r\n\r\nhello",
    "HTTP/1.1 200 OK\r\nContent-Length: ,5\r\n\r\nhello",
    "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",
    "HTTP/1.1 200 OK\r\nContent-Length: 5\u00a0\r\n\r\nhello",
    "HTTP/1.1 200 OK\r\nContent-Length: 1234567890123456\r\n\r\n",
  ]) {
    const o = parse(res);
    assert.deepEqual(o.order, ["error"], JSON.stringify(res));
    assert.match(o.errors[0], /(invalid|conflicting) Content-Length/);
  }
  for (const res of [
    "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello",
    "HTTP/1.1 200 OK\r\nContent-Length: 5 ,5\r\n\r\nhello",
    "HTTP/1.1 200 OK\r\nContent-Length:5\t\r\n\r\nhello",
  ]) {
    const o = parse(res);
    assert.deepEqual(o.errors, [], res);
    assert.equal(o.heads[0].headers["content-length"], "5");
    assert.equal(o.body, "hello");
    assert.equal(o.completed, 1);
  }
});

test("only end-to-end headers are handed on: not the hop-by-hop ones, nor those Connection names", () => {
  const o = parse(
    "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret\r\nKeep-Alive: timeout=5\r\nX-Secret: 1\r\n" +
      "Upgrade: h2c\r\nTrailer: x-t\r\nProxy-Authenticate: Basic\r\nX-Kept: 2\r\nContent-Length: 0\r\n\r\n",
  );
  assert.deepEqual(o.errors, []);
  assert.deepEqual(o.heads[0].headers, { "x-kept": "2", "content-length": "0" });
  assert.equal(o.heads[0].keepAlive, true, "Connection is still read for the framing");
  const chunked = parse(
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
  );
  assert.deepEqual(chunked.heads[0].headers, { "x-a": "1" });
  assert.equal(chunked.body, "abc");
});

test("repeated headers become arrays in order; names are lower-cased and values trimmed", () => {
  const o = parse(
    "HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nX-One:  1 \r\nset-cookie: b=2\r\nSET-COOKIE:c=3\r\nContent-Length: 0\r\n\r\n",
  );
  assert.deepEqual(o.heads[0].headers["set-cookie"], ["a=1", "b=2", "c=3"]);
  assert.equal(o.heads[0].headers["x-one"], "1");
});

test("keep-alive: HTTP/1.1 by default, not with Connection: close; HTTP/1.0 only with keep-alive", () => {
  const cases: Array<[string, boolean]> = [
    ["HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", true],
    ["HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", false],
    ["HTTP/1.1 200 OK\r\nConnection: Upgrade, Close\r\nContent-Length: 0\r\n\r\n", false],
    ["HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", true],
    // A token is a whole list item: "closed" or "x-close" is not "close".
    ["HTTP/1.1 200 OK\r\nConnection: closed, x-close\r\nContent-Length: 0\r\n\r\n", true],
    ["HTTP/1.1 200 OK\r\nConnection: x-a ,  CLOSE \r\nContent-Length: 0\r\n\r\n", false],
    ["HTTP/1.1 200 OK\r\nConnection: x-a\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", false],
    ["HTTP/1.0 200 OK\r\nConnection: not-keep-alive\r\nContent-Length: 0\r\n\r\n", false],
    ["HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false],
    ["HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", true],
    ["HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nKeep-Alive: timeout=5\r\nContent-Length: 0\r\n\r\n", true],
    ["HTTP/1.0 204 No Content\r\n\r\n", false],
  ];
  for (const [res, keepAlive] of cases) {
    const o = parse(res);
    assert.deepEqual(o.errors, [], res);
    assert.equal(o.heads[0].keepAlive, keepAlive, JSON.stringify(res));
  }
  // An HTTP/1.0 answer with no length runs to the end, keep-alive or not.
  const o = parse("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\nbody", { end: true });
  assert.equal(o.heads[0].bodyKind, "close");
  assert.equal(o.heads[0].keepAlive, false);
  assert.equal(o.body, "body");
});

test("a head over 64 KiB is an error, whole or in pieces; a head just under it is fine", () => {
  const status = "HTTP/1.1 200 OK\r\n";
  const line = (n: number) => `x-big: ${"a".repeat(n)}\r\n`;
  const tail = "Content-Length: 0\r\n\r\n";
  const fits = status + line(MAX_HEAD - status.length - tail.length - 9) + tail;
  assert.equal(fits.length, MAX_HEAD);
  assert.deepEqual(parse(fits).errors, []);
  const over = status + line(MAX_HEAD - status.length - tail.length - 8) + tail;
  assert.equal(over.length, MAX_HEAD + 1);
  for (const at of [[], [100], [MAX_HEAD - 10], [MAX_HEAD + 1 - 2]]) {
    const o = parse(over, { at });
    assert.deepEqual(o.order, ["error"], `split at ${at}`);
    assert.match(o.errors[0], /response head too large \(over 65536 bytes\)/);
  }
  // A head that never ends is cut at the bound, not gathered for ever.
  const endless = status + "x-a: b\r\n".repeat(9000);
  const pieces = Array.from({ length: Math.floor(endless.length / 1000) }, (_, i) => (i + 1) * 1000);
  const o = parse(endless, { at: pieces });
  assert.equal(o.errors.length, 1);
  assert.match(o.errors[0], /response head too large/);
});

test("malformed heads are errors: not HTTP, a folded header line, a header line without a colon", () => {
  for (const res of [
    "SSH-2.0-OpenSSH_9.6\r\n\r\n",
    "HTTP/2 200\r\n\r\n",
    "HTTP/1.1 20 OK\r\n\r\n",
    "HTTP/1.1 2000 OK\r\n\r\n",
    "HTTP/1.2 200 OK\r\n\r\n",
    "HTTP/1.1  200 OK\r\n\r\n",
    "HTTP/1.1 2x0 OK\r\n\r\n",
    "http/1.1 200 OK\r\n\r\n",
    "HTTP/1.1 200 OK\r\nX-A: b\r\n  folded\r\n\r\n",
    "HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
    "HTTP/1.1 200 OK\r\n: empty name\r\n\r\n",
  ]) {
    const o = parse(res);
    assert.deepEqual(o.order, ["error"], JSON.stringify(res));
  }
});

test("a body cut short is an error at end(), once: Content-Length, chunked, and no answer at all", () => {
  for (const [what, res, message] of [
    [
      "Content-Length",
      "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
      /ended in the middle of the body/,
    ],
    [
      "chunked, mid-chunk",
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\nshort",
      /ended in the middle of the body/,
    ],
    [
      "chunked, before the last chunk",
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n",
      /ended in the middle of the body/,
    ],
    [
      "chunked, in the trailers",
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nx-t: 1\r\n",
      /ended in the middle of the body/,
    ],
    ["no byte", "", /ended before the response head/],
    [
      "half a head",
      "HTTP/1.1 200 OK\r\nContent-",
      /ended before the response head|ended in the middle of the body/,
    ],
  ] as const) {
    const o = parse(res, { end: true });
    assert.equal(o.completed, 0, what);
    assert.equal(o.errors.length, 1, what);
    assert.match(o.errors[0], message, what);
    assert.equal(o.order.at(-1), "error", what);
  }
});

test("untouched is true until the first byte of an answer, so a reused connection's staleness can be told", () => {
  const parser = new Http1ResponseParser({ head() {}, body() {}, complete() {}, error() {} }, false);
  assert.equal(parser.untouched, true);
  parser.push(Buffer.from("H"));
  assert.equal(parser.untouched, false);
});

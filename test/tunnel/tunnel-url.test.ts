// tunnelUrl(): what a user passes as the server (the seed's `-server` may or may not end in
// /api/v1/revdial; http(s) or ws(s)) becomes the one tunnel URL.

import assert from "node:assert/strict";
import { test } from "node:test";
import { tunnelUrl } from "../../src/agent/tunnel-client.ts";

const url = (server: string, id = "sandbox-1") => tunnelUrl(server, id).toString();

test("http becomes ws and https becomes wss; ws and wss stay", () => {
  assert.equal(url("http://api.example.com"), "ws://api.example.com/api/v1/revdial?runnerid=sandbox-1");
  assert.equal(url("https://api.example.com"), "wss://api.example.com/api/v1/revdial?runnerid=sandbox-1");
  assert.equal(url("ws://10.0.0.1:8080"), "ws://10.0.0.1:8080/api/v1/revdial?runnerid=sandbox-1");
  assert.equal(
    url("wss://api.example.com:8443"),
    "wss://api.example.com:8443/api/v1/revdial?runnerid=sandbox-1",
  );
});

test("with or without the /api/v1/revdial suffix, with or without a trailing slash", () => {
  const want = "ws://h:8080/api/v1/revdial?runnerid=sandbox-1";
  for (const server of [
    "http://h:8080",
    "http://h:8080/",
    "http://h:8080/api/v1/revdial",
    "http://h:8080/api/v1/revdial/",
  ])
    assert.equal(url(server), want, server);
});

test("a path prefix (API behind a reverse proxy) is kept", () => {
  assert.equal(url("https://h/revdial-api"), "wss://h/revdial-api/api/v1/revdial?runnerid=sandbox-1");
  assert.equal(
    url("https://h/revdial-api/api/v1/revdial"),
    "wss://h/revdial-api/api/v1/revdial?runnerid=sandbox-1",
  );
});

test("a query in the server URL is replaced by the runner id, which is encoded", () => {
  assert.equal(url("http://h/?runnerid=other&x=1"), "ws://h/api/v1/revdial?runnerid=sandbox-1");
  assert.equal(tunnelUrl("http://h", "a b&c").searchParams.get("runnerid"), "a b&c");
  assert.equal(url("http://h", "wolf-1:gpu.0"), "ws://h/api/v1/revdial?runnerid=wolf-1%3Agpu.0");
});

test("anything else is refused, naming the option", () => {
  for (const bad of ["api.example.com", "ftp://h", "", "unix:///run/x.sock"])
    assert.throws(
      () => tunnelUrl(bad, "sandbox-1"),
      { code: "RD_ERR_INVALID_OPTION", message: /serverUrl/ },
      bad,
    );
});

// Faults the fuzz runs found, pinned one by one (each case crashed the whole server process, every
// tunnel with it, before its fix). Each sends its input from the attacker's side to a server in its
// own process and proves the server is still up, back to baseline, and serving the healthy tunnel.

import assert from "node:assert/strict";
import { afterEach, beforeEach, test } from "node:test";
import WebSocket from "ws";
import { TUNNEL_PATH } from "../../src/tunnel/constants.ts";
import { FUZZ_TOKEN, type FuzzTarget, startFuzzTarget } from "./fixtures/fuzz-harness.ts";

// A server per case, so that each case proves its own fault.
let server: FuzzTarget;
beforeEach(async () => {
  server = await startFuzzTarget();
});
afterEach(async () => {
  await server.close();
});

/** Opens a v1 control connection, sends `line`, and resolves once the server has dealt with it. */
async function sendControlLine(runnerId: string, line: string): Promise<void> {
  const url = `${server.url.replace("http:", "ws:")}${TUNNEL_PATH}?runnerid=${runnerId}`;
  const ws = new WebSocket(url, { headers: { authorization: `Bearer ${FUZZ_TOKEN}` } });
  await new Promise((resolve, reject) => {
    ws.once("open", resolve);
    ws.once("error", reject);
  });
  const closed = new Promise((resolve) => ws.once("close", resolve));
  ws.on("error", () => {});
  ws.send(Buffer.from(`${line}\n`));
  // A keep-alive after it: the server has read the line before it reads this one.
  ws.send(Buffer.from('{"command":"keep-alive"}\n'));
  ws.close();
  await closed;
}

test("a v1 control line `null` no longer kills the server (TypeError reading 'command')", async () => {
  await sendControlLine("fz-null-line", "null");
  await server.assertAlive();
  await server.checkRecovered("null control line");
  assert.equal((await server.call("healthy-agent", "/after")).status, 200);
});

test("a v1 pickup-failed whose connPath is no URL (`//[`) no longer kills the server (ERR_INVALID_URL)", async () => {
  await sendControlLine("fz-bad-connpath", JSON.stringify({ command: "pickup-failed", connPath: "//[" }));
  await server.assertAlive();
  await server.checkRecovered("unparsable connPath");
  assert.equal((await server.call("healthy-agent", "/after")).status, 200);
});

// The sync bridge (`revdial agent --agent-command`) against a real server, with real agent programs
// run through `sh -c`:
// - the example agent answers a message: the interaction fills in several parts and completes, and
//   the program's stdin got the API's message exactly as it was sent;
// - a program that exits after each answer is started again (with backoff) and its stderr reaches
//   the agent's log;
// - the socket is cut (a TCP relay in between drops every connection) and comes back by itself:
//   messages sent while it was down reach the program once and in order, and a message the API
//   sends again (it had no answer yet) is not given to the program twice.

import assert from "node:assert/strict";
import { readFile, rm, writeFile } from "node:fs/promises";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PassThrough } from "node:stream";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { exampleAgentCommand } from "../../src/agent/example-agent.ts";
import { SyncBridge } from "../../src/agent/sync-bridge.ts";
import { createLogger, silentLogger } from "../../src/common/logger.ts";
import type { Session } from "../../src/store/index.ts";
import { interactionEvents, SseReader } from "../api/agent-sync-harness.ts";
import { World } from "../host/host-harness.ts";

const ONE_TURN = fileURLToPath(new URL("./sync-bridge-fixtures/one-turn-agent.ts", import.meta.url));

interface Turn {
  id: string;
  response: string;
  state: string;
}

/** A TCP relay to the API whose connections the test can cut. */
async function startRelay(port: number) {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(port, "127.0.0.1");
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on("close", () => sockets.delete(s));
      s.on("error", () => {});
    }
    client.pipe(upstream).pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`,
    cut: () => {
      for (const s of sockets) s.destroy();
    },
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

describe("sync bridge", () => {
  let w: World;
  let alice: { key: string; userId: string };
  const cleanups: (() => Promise<unknown>)[] = [];

  before(async () => {
    w = await new World().start();
    alice = await w.user("alice");
  });
  after(async () => {
    for (const c of cleanups.reverse()) await c();
    await w.close();
  });

  async function session(): Promise<{ s: Session; key: string }> {
    const s = await w.server.store.sessions.create({ ownerId: alice.userId, name: "bridge" });
    return { s, key: (await w.server.auth.createSessionKey(s)).apiKey };
  }

  function bridge(s: Session, key: string, command: string, serverUrl = w.url, logger = silentLogger()) {
    const b = new SyncBridge({
      serverUrl,
      sessionId: s.id,
      token: key,
      command,
      logger,
      backoffBaseMs: 20,
      backoffCapMs: 200,
      program: { backoffBaseMs: 20, backoffCapMs: 200 },
    });
    void b.start();
    cleanups.push(() => b.close());
    return b;
  }

  async function logFile(name: string): Promise<string> {
    const path = join(tmpdir(), `revdial-sync-${process.pid}-${name}.log`);
    await writeFile(path, "");
    cleanups.push(() => rm(path, { force: true }));
    return path;
  }

  const send = (id: string, content: string) =>
    w.call<Turn>("POST", `/api/v1/sessions/${id}/messages`, alice.key, { content });
  const turns = async (id: string) =>
    (await w.call<Turn[]>("GET", `/api/v1/sessions/${id}/interactions`, alice.key)).body;

  it("runs the example agent: the answer streams in parts, completes, and stdin got the message as sent", async () => {
    const { s, key } = await session();
    const stdinLog = await logFile("stdin");
    bridge(s, key, `tee -a '${stdinLog}' | ${exampleAgentCommand()} --part-delay-ms 20`);
    const sse = await SseReader.open(`${w.url}/api/v1/sessions/${s.id}/events`, alice.key);
    const sent = await send(s.id, "hello there, example agent");
    await sse.until(
      (e) => interactionEvents(e, sent.body.id).some((d) => d.state === "complete"),
      "the completed answer",
      20_000,
    );
    const parts = [
      ...new Set(
        interactionEvents(sse.events, sent.body.id)
          .map((d) => d.response)
          .filter(Boolean),
      ),
    ];
    assert.ok(parts.length >= 3, `streamed in ${parts.length} parts`);
    assert.equal(parts.at(-1), "You said: hello there, example agent");
    assert.equal((await turns(s.id))[0].state, "complete");
    const expected = JSON.stringify({
      type: "chat_message",
      data: { content: "hello there, example agent", interaction_id: sent.body.id },
    });
    assert.equal(await readFile(stdinLog, "utf8"), `${expected}\n`);
    sse.close();
  });

  it("starts a program that exits again, and passes its stderr to the agent's log", async () => {
    const { s, key } = await session();
    const stdinLog = await logFile("one-turn");
    const logged = new PassThrough();
    let logText = "";
    logged.on("data", (c: Buffer) => {
      logText += c.toString();
    });
    const b = bridge(
      s,
      key,
      `SYNC_TEST_LOG='${stdinLog}' ${process.execPath} '${ONE_TURN}'`,
      w.url,
      createLogger({ level: "info", destination: logged }),
    );
    const first = await send(s.id, "first");
    await w.until(async () => (await turns(s.id))[0]?.state === "complete", "first answered", 20_000);
    const second = await send(s.id, "second");
    await w.until(async () => (await turns(s.id))[1]?.state === "complete", "second answered", 20_000);
    const [a, bTurn] = await turns(s.id);
    assert.equal(a.id, first.body.id);
    assert.equal(bTurn.id, second.body.id);
    assert.notEqual(a.response, bTurn.response, "answered by two program instances");
    assert.ok(b.program.starts >= 2);
    assert.match(logText, /one-turn agent exiting/);
    assert.match(logText, /agent program exited: restarting/);
  });

  it("reconnects after a cut: messages sent meanwhile arrive once, in order; a resent one is not repeated", async () => {
    const { s, key } = await session();
    const relay = await startRelay(w.server.port);
    cleanups.push(() => relay.close());
    const stdinLog = await logFile("silent");
    // A program that never answers: every message it is given stays unacknowledged at the API.
    const b = bridge(s, key, `cat >> '${stdinLog}'`, relay.url);
    await w.until(() => b.connections === 1, "first connection");
    const unanswered = await send(s.id, "unanswered");
    await w.until(async () => (await readFile(stdinLog, "utf8")).includes(unanswered.body.id), "given once");

    relay.cut();
    const ids = [];
    for (const text of ["while away 1", "while away 2", "while away 3"])
      ids.push((await send(s.id, text)).body.id);
    await w.until(() => b.connections >= 2, "reconnected", 20_000);
    const last = (await send(s.id, "after")).body.id;
    await w.until(async () => (await readFile(stdinLog, "utf8")).includes(last), "the last message", 20_000);

    const given = (await readFile(stdinLog, "utf8"))
      .trim()
      .split("\n")
      .map((l) => (JSON.parse(l) as { data: { interaction_id: string } }).data.interaction_id);
    assert.deepEqual(given, [unanswered.body.id, ...ids, last], "each once, in order");
  });
});

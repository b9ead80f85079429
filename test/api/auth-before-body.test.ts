// Authentication before the body, against `revdial server` run as a child process: an
// unauthenticated 50 MiB POST (to a JSON route, the clipboard and the admin proxy) gets its 401
// while the client has sent only the first 64 KiB, the connection is then closed so the rest is
// never read, and the server's RSS does not grow by anything like 50 MiB. Then the body limits of
// an authenticated caller: 1 MiB for JSON routes, 10 MiB for the clipboard, and the proxy's own
// (a 2 MiB upload passes through it to the sandbox).

import assert from "node:assert/strict";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import type { AgentClient } from "../../src/agent/tunnel-client.ts";
import { type Listening, pollUntil, startAgent, startTarget } from "../helpers/tunnel-harness.ts";
import { type CliProcess, startCli } from "../tls/cli-process.ts";

const MiB = 1024 * 1024;
const ANNOUNCED = 50 * MiB;
const FIRST_PART = 64 * 1024;
/** How long the test waits for an answer before failing (a deadline, not a measurement). */
const ANSWER_DEADLINE_MS = 15_000;

async function rssOf(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, "utf8");
  return Number(/^VmRSS:\s+(\d+) kB/m.exec(status)?.[1] ?? 0) * 1024;
}

interface Attempt {
  /** The status line and headers the server sent. */
  head: string;
  /** Body bytes the client had handed to the socket when the answer arrived. */
  sentBeforeAnswer: number;
  /** Body bytes the socket took in all before the server closed it. */
  sentInAll: number;
}

/**
 * Announces a body of `announced` bytes (50 MiB by default), sends 64 KiB of it, and waits for the
 * answer; then tries to send the rest, counting what the socket takes until the server closes it.
 * (A raw socket: a client that writes on after an early answer may see a reset instead of it.)
 */
function postHuge(
  port: number,
  path: string,
  headers: Record<string, string> = {},
  announced = ANNOUNCED,
): Promise<Attempt> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, "127.0.0.1");
    const chunk = Buffer.alloc(FIRST_PART, 0x61);
    let sent = 0;
    let answer = "";
    let sentBeforeAnswer = -1;
    let closed = false;
    const deadline = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no answer within ${ANSWER_DEADLINE_MS} ms: the server waited for the body`));
    }, ANSWER_DEADLINE_MS);
    const extra = Object.entries(headers)
      .map(([k, v]) => `${k}: ${v}\r\n`)
      .join("");
    socket.write(
      `POST ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n` +
        `Content-Length: ${announced}\r\n${extra}\r\n`,
    );
    socket.write(chunk, () => {
      sent += chunk.length;
    });
    const pushRest = () => {
      // Bounded: at most the announced size, one chunk per drain.
      while (!closed && sent < announced) {
        const ok = socket.write(chunk, (err) => {
          if (!err) sent += chunk.length;
        });
        if (!ok) return void socket.once("drain", pushRest);
      }
    };
    socket.on("data", (data: Buffer) => {
      answer += data.toString("latin1");
      if (sentBeforeAnswer === -1 && answer.includes("\r\n\r\n")) {
        sentBeforeAnswer = sent;
        clearTimeout(deadline);
        pushRest();
      }
    });
    socket.on("error", () => {});
    socket.on("close", () => {
      closed = true;
      clearTimeout(deadline);
      if (sentBeforeAnswer === -1) return reject(new Error(`closed without an answer: ${answer}`));
      resolve({ head: answer.split("\r\n\r\n")[0], sentBeforeAnswer, sentInAll: sent });
    });
  });
}

describe("authentication before the body, on a server process", () => {
  let dir: string;
  let server: CliProcess;
  let url: string;
  let port: number;
  let adminKey: string;
  let target: Listening;
  let agent: AgentClient | null = null;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "revdial-body-"));
    server = startCli(["server", "--listen", "127.0.0.1:0", "--data-dir", join(dir, "data")]);
    url = (await server.waitFor(/listening on (http:\/\/\S+)/, 60_000))[1];
    port = Number(new URL(url).port);
    adminKey = (await server.waitFor(/admin API key[^:]*: (\S+)/))[1];
    target = await startTarget();
  });
  after(async () => {
    await agent?.close(100);
    await server?.stop();
    await target?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("an unauthenticated 50 MiB POST gets 401 before its body is read, and the connection is closed", async () => {
    // Warm the routes up, so the reading below measures the bodies and not first-call costs.
    await fetch(`${url}/api/v1/sessions`, { method: "POST" });
    const rssBefore = await rssOf(server.child.pid!);
    const paths = [
      "/api/v1/sessions",
      "/api/v1/external-agents/ses_00000000000000000000000000/clipboard",
      "/api/v1/revdial/wolf-nobody/proxy/upload",
    ];
    for (const path of paths) {
      const variants: Record<string, string>[] = [{}, { authorization: `Bearer rd-${"x".repeat(40)}` }];
      for (const headers of variants) {
        const attempt = await postHuge(port, path, headers);
        assert.match(attempt.head, /^HTTP\/1\.1 401 /, `${path}: ${attempt.head}`);
        assert.match(attempt.head, /^connection: close$/im, path);
        assert.ok(
          attempt.sentBeforeAnswer <= 2 * FIRST_PART,
          `${path}: answered after ${attempt.sentBeforeAnswer} body bytes`,
        );
        assert.ok(
          attempt.sentInAll < ANNOUNCED / 2,
          `${path}: the server took ${attempt.sentInAll} of ${ANNOUNCED} bytes before closing`,
        );
      }
    }
    const grown = (await rssOf(server.child.pid!)) - rssBefore;
    assert.ok(grown < 32 * MiB, `six 50 MiB POSTs grew the server's RSS by ${grown} bytes`);
  });

  it("JSON routes take 1 MiB, the clipboard 10 MiB, the proxy its own limit", async () => {
    const post = (path: string, body: Buffer | string, method = "POST") =>
      fetch(url + path, {
        method,
        headers: { authorization: `Bearer ${adminKey}`, "content-type": "application/json" },
        body,
      });
    const auth = { authorization: `Bearer ${adminKey}` };
    const json = await postHuge(port, "/api/v1/sessions", auth, 2 * MiB);
    assert.match(json.head, /^HTTP\/1\.1 413 /, json.head);
    const clip = (size: number) => JSON.stringify({ type: "text", data: "y".repeat(size) });
    const session = (await (await post("/api/v1/sessions", "{}")).json()) as { id: string };
    const fits = await post(`/api/v1/external-agents/${session.id}/clipboard`, clip(5 * MiB));
    assert.equal(fits.status, 503, "5 MiB reaches the handler (no sandbox: 503)");
    await fits.arrayBuffer();
    const tooBig = await postHuge(port, `/api/v1/external-agents/${session.id}/clipboard`, auth, 11 * MiB);
    assert.match(tooBig.head, /^HTTP\/1\.1 413 /, tooBig.head);

    agent = startAgent(url, "wolf-bodies", `127.0.0.1:${target.port}`, { token: adminKey });
    const upload = Buffer.alloc(2 * MiB, 3);
    await pollUntil(
      async () => {
        const res = await fetch(`${url}/api/v1/revdial/connections`, { headers: auth });
        return ((await res.json()) as { runner_id: string }[]).some((c) => c.runner_id === "wolf-bodies");
      },
      "wolf-bodies connected",
      20_000,
      50,
    );
    const through = await post("/api/v1/revdial/wolf-bodies/proxy/upload", upload, "PUT");
    assert.equal(through.status, 200);
    assert.equal(Buffer.from(await through.arrayBuffer()).length, upload.length);
  });
});

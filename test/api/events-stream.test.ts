// GET /api/v1/events, the dashboard's one live stream, from the client's side: a user's stream
// carries their own sessions' changes and nothing of another user's (an admin's carries both, and
// hosts); no key is a 401, a host key a 403; a revoked key's stream ends at the next keep-alive; a
// client that stops reading is cut instead of being buffered for without bound; and a client that
// leaves is forgotten (no subscriber is left behind).

import assert from "node:assert/strict";
import { once } from "node:events";
import { mkdtemp, rm } from "node:fs/promises";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { type RunningServer, startServer } from "../../src/api/server.ts";
import { silentLogger } from "../../src/common/logger.ts";
import { pollUntil } from "../helpers/tunnel-harness.ts";

interface Stream {
  text(): string;
  /** Resolves once the stream's text matches `pattern`. */
  waitFor(pattern: RegExp, timeoutMs?: number): Promise<void>;
  ended: Promise<void>;
  close(): void;
}

describe("GET /api/v1/events", () => {
  let dir: string;
  let server: RunningServer;
  let alice: { id: string; key: string };
  let bob: { id: string; key: string };

  const api = (path: string, key: string, init: RequestInit = {}) =>
    fetch(`${server.url}${path}`, {
      ...init,
      headers: {
        authorization: `Bearer ${key}`,
        ...(init.body === undefined ? {} : { "content-type": "application/json" }),
      },
    });

  async function open(key: string): Promise<Stream> {
    const abort = new AbortController();
    const res = await fetch(`${server.url}/api/v1/events`, {
      headers: { authorization: `Bearer ${key}` },
      signal: abort.signal,
    });
    assert.equal(res.status, 200);
    assert.match(res.headers.get("content-type") ?? "", /^text\/event-stream/);
    let text = "";
    const waiters = new Set<() => void>();
    const ended = (async () => {
      const decoder = new TextDecoder();
      try {
        for await (const chunk of res.body!) {
          text += decoder.decode(chunk as Uint8Array, { stream: true });
          for (const w of waiters) w();
        }
      } catch {
        // aborted by close()
      }
    })();
    return {
      text: () => text,
      ended,
      close: () => abort.abort(),
      waitFor: (pattern, timeoutMs = 10_000) =>
        pollUntil(() => pattern.test(text), `stream text matching ${pattern}`, timeoutMs, 20),
    };
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "revdial-events-"));
    server = await startServer({
      listen: "127.0.0.1:0",
      dataDir: join(dir, "data"),
      logger: silentLogger(),
      eventsHeartbeatMs: 200,
    });
    for (const name of ["alice", "bob"]) {
      const res = await api("/api/v1/users", server.adminKey!, {
        method: "POST",
        body: JSON.stringify({ name }),
      });
      const body = (await res.json()) as { id: string; api_key: string };
      if (name === "alice") alice = { id: body.id, key: body.api_key };
      else bob = { id: body.id, key: body.api_key };
    }
  });
  after(async () => {
    await server.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("carries a user's own session changes only; an admin sees them all", async () => {
    const aliceStream = await open(alice.key);
    const bobStream = await open(bob.key);
    const adminStream = await open(server.adminKey!);
    await aliceStream.waitFor(/event: ready\ndata: \{"admin":false\}/);
    await adminStream.waitFor(/event: ready\ndata: \{"admin":true\}/);
    const created = await api("/api/v1/sessions", alice.key, {
      method: "POST",
      body: JSON.stringify({ name: "a1" }),
    });
    const session = (await created.json()) as { id: string };
    await aliceStream.waitFor(
      new RegExp(`event: session\\ndata: \\{"id":"${session.id}".*"status":"pending"`),
    );
    await adminStream.waitFor(new RegExp(session.id));
    // A change Bob may see, after Alice's: when it has arrived, Alice's would have too.
    const own = (await (
      await api("/api/v1/sessions", bob.key, { method: "POST", body: JSON.stringify({ name: "b1" }) })
    ).json()) as { id: string };
    await bobStream.waitFor(new RegExp(own.id));
    assert.doesNotMatch(bobStream.text(), new RegExp(session.id));
    assert.doesNotMatch(aliceStream.text(), new RegExp(own.id));
    // Keep-alives arrive every heartbeat.
    await aliceStream.waitFor(/: keep-alive\n\n/);
    for (const s of [aliceStream, bobStream, adminStream]) s.close();
    await pollUntil(() => server.events.subscribers === 0, "every stream unsubscribed", 5000, 20);
  });

  it("refuses no key (401) and a host key (403)", async () => {
    const none = await fetch(`${server.url}/api/v1/events`);
    assert.equal(none.status, 401);
    assert.equal(((await none.json()) as { error: { code: string } }).error.code, "RD_ERR_AUTH_REQUIRED");
    const host = await api("/api/v1/wolf-instances", server.adminKey!, {
      method: "POST",
      body: JSON.stringify({ id: "ev-host" }),
    });
    const hostKey = ((await host.json()) as { key: string }).key;
    const refused = await api("/api/v1/events", hostKey);
    assert.equal(refused.status, 403);
  });

  it("ends the stream of a key revoked meanwhile", async () => {
    const made = await api(`/api/v1/users/${alice.id}/keys`, server.adminKey!, {
      method: "POST",
      body: JSON.stringify({ access: "read" }),
    });
    const key = (await made.json()) as { id: string; api_key: string };
    const stream = await open(key.api_key);
    await stream.waitFor(/event: ready/);
    const revoked = await api(`/api/v1/users/${alice.id}/keys/${key.id}`, server.adminKey!, {
      method: "DELETE",
    });
    assert.equal(revoked.status, 200);
    await stream.ended;
    await pollUntil(() => server.events.subscribers === 0, "the revoked stream unsubscribed", 5000, 20);
  });

  it("cuts a client that stops reading, with what it holds bounded", async () => {
    const socket = net.connect(server.port, "127.0.0.1");
    await once(socket, "connect");
    const before = server.events.subscribers;
    socket.write(`GET /api/v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${alice.key}\r\n\r\n`);
    await pollUntil(() => server.events.subscribers === before + 1, "the slow stream subscribed", 5000, 20);
    socket.pause(); // reads nothing more: the kernel buffers fill, then the server's
    const closed = once(socket, "close");
    socket.resume = () => socket; // keep it paused whatever the stream does
    const padding = "x".repeat(16 * 1024);
    // At most 64 MiB offered; the server must give up long before (256 KiB past the kernel's buffers).
    for (let i = 0; i < 4096 && server.events.subscribers > before; i++) {
      server.events.publish({ type: "session", ownerId: alice.id, data: { id: `ses_${i}`, padding } });
      if (i % 64 === 0) await new Promise((r) => setImmediate(r));
    }
    assert.equal(server.events.subscribers, before, "the slow client was cut");
    socket.destroy();
    await closed;
  });
});

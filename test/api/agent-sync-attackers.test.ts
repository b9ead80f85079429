// The agent sync channel from the attacker's side, through a real server and real sockets:
// - another user's keys cannot open a session's sync socket, read its interactions, send to it,
//   cancel its turn or follow its events (404, as for every session of another tenant);
// - another session's `rds-` key cannot open the socket (403 before the upgrade) nor touch the
//   session over HTTP (404); a session key cannot speak for the user on its own session (403);
// - a read-only key of the owner may read and follow, not open the socket nor send (403);
// - bad input: a frame that is not JSON closes with 1003 and a reason, a 10 MiB frame is refused
//   (1009) before it is buffered, and a flood of events is cut (1008) while another session's agent
//   goes on being served.

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import type { Session } from "../../src/store/index.ts";
import { World } from "../host/host-harness.ts";
import { HandshakeRefused, SseReader, SyncClient } from "./agent-sync-harness.ts";

describe("agent sync against attackers and bad input", () => {
  let w: World;
  let alice: { key: string; userId: string };
  let bob: { key: string; userId: string };
  let target: Session;
  let targetKey: string;
  let bobsSessionKey: string;

  before(async () => {
    w = await new World().start();
    alice = await w.user("alice");
    bob = await w.user("bob");
    target = await w.server.store.sessions.create({ ownerId: alice.userId, name: "alice's" });
    targetKey = (await w.server.auth.createSessionKey(target)).apiKey;
    const bobs = await w.server.store.sessions.create({ ownerId: bob.userId, name: "bob's" });
    bobsSessionKey = (await w.server.auth.createSessionKey(bobs)).apiKey;
  });
  after(async () => {
    await w.close();
  });

  async function refused(sessionId: string, key: string): Promise<HandshakeRefused> {
    try {
      const client = await SyncClient.open(w.url, sessionId, key);
      await client.close();
    } catch (err) {
      if (err instanceof HandshakeRefused) return err;
      throw err;
    }
    assert.fail("the sync socket opened");
  }

  const paths = (id: string) => ({
    interactions: `/api/v1/sessions/${id}/interactions`,
    messages: `/api/v1/sessions/${id}/messages`,
    cancel: `/api/v1/sessions/${id}/cancel`,
    events: `/api/v1/sessions/${id}/events`,
  });

  it("another user's key: 404 everywhere, and the socket is refused before the upgrade", async () => {
    const p = paths(target.id);
    const socket = await refused(target.id, bob.key);
    assert.equal(socket.status, 404);
    assert.equal(socket.code, "RD_ERR_SESSION_NOT_FOUND");
    assert.equal((await w.call("GET", p.interactions, bob.key)).status, 404);
    assert.equal((await w.call("POST", p.messages, bob.key, { content: "hi" })).status, 404);
    assert.equal((await w.call("POST", p.cancel, bob.key, {})).status, 404);
    const sse = await SseReader.open(w.url + p.events, bob.key);
    assert.equal(sse.status, 404);
    assert.equal((await w.server.store.interactions.list(target.id)).length, 0, "nothing was queued");
  });

  it("another session's rds- key: 403 on the socket, 404 over HTTP", async () => {
    const p = paths(target.id);
    const socket = await refused(target.id, bobsSessionKey);
    assert.equal(socket.status, 403);
    assert.equal(socket.code, "RD_ERR_SYNC_FORBIDDEN");
    assert.equal((await w.call("GET", p.interactions, bobsSessionKey)).status, 404);
    assert.equal((await w.call("POST", p.messages, bobsSessionKey, { content: "hi" })).status, 404);
    assert.equal((await w.call("POST", p.cancel, bobsSessionKey, {})).status, 404);
    assert.equal((await SseReader.open(w.url + p.events, bobsSessionKey)).status, 404);
  });

  it("the session's own key reads its interactions but cannot send or cancel as the user", async () => {
    const p = paths(target.id);
    assert.equal((await w.call("GET", p.interactions, targetKey)).status, 200);
    const send = await w.call<{ error: { code: string } }>("POST", p.messages, targetKey, { content: "x" });
    assert.equal(send.status, 403);
    assert.equal(send.body.error.code, "RD_ERR_AUTH_SCOPE");
    assert.equal((await w.call("POST", p.cancel, targetKey, {})).status, 403);
  });

  it("the owner's read-only key may read and follow, not open the socket nor send", async () => {
    const { apiKey: readOnly } = await w.server.auth.createUserKey(alice.userId, { access: "read" });
    const p = paths(target.id);
    const socket = await refused(target.id, readOnly);
    assert.equal(socket.status, 403);
    assert.equal(socket.code, "RD_ERR_AUTH_READ_ONLY");
    assert.equal((await w.call("POST", p.messages, readOnly, { content: "x" })).status, 403);
    assert.equal((await w.call("POST", p.cancel, readOnly, {})).status, 403);
    assert.equal((await w.call("GET", p.interactions, readOnly)).status, 200);
    const sse = await SseReader.open(w.url + p.events, readOnly);
    assert.equal(sse.status, 200);
    sse.close();
  });

  it("no key, a bad key, a host's key, a malformed session id: refused", async () => {
    assert.equal((await refused(target.id, "rds-not-a-real-key")).status, 401);
    assert.equal((await refused(target.id, await w.hostKey("sync-attacker"))).status, 403);
    assert.equal((await refused("../../etc", alice.key)).status, 400);
  });

  it("malformed JSON closes with 1003 and a reason; so does a binary frame", async () => {
    const agent = await SyncClient.open(w.url, target.id, targetKey);
    agent.ws.send("{not json");
    const closed = await agent.waitClosed();
    assert.equal(closed.code, 1003);
    assert.match(closed.reason, /malformed JSON/);

    const binary = await SyncClient.open(w.url, target.id, targetKey);
    binary.ws.send(Buffer.from("{}"), { binary: true });
    assert.equal((await binary.waitClosed()).code, 1003);
  });

  it("a 10 MiB frame is refused and the socket closed, and the session can connect again", async () => {
    const agent = await SyncClient.open(w.url, target.id, targetKey);
    const big = JSON.stringify({
      event_type: "message_added",
      data: { content: "x".repeat(10 * 1024 * 1024) },
    });
    agent.ws.send(big);
    const closed = await agent.waitClosed();
    // The server closes with 1009 as soon as it reads the frame's length; the client may see the
    // TCP connection end (1006) before the close frame while it is still writing the 10 MiB.
    assert.ok([1009, 1006].includes(closed.code), `closed with ${closed.code}`);
    const again = await SyncClient.open(w.url, target.id, targetKey);
    await again.close();
  });

  it("a flood of events is cut with 1008 while another session's agent is served", async () => {
    const flooder = await SyncClient.open(w.url, target.id, targetKey);
    const other = await w.server.store.sessions.create({ ownerId: bob.userId, name: "calm" });
    const otherKey = (await w.server.auth.createSessionKey(other)).apiKey;
    const calm = await SyncClient.open(w.url, other.id, otherKey);

    const frame = JSON.stringify({ session_id: target.id, event_type: "ping", data: {} });
    for (let i = 0; i < 20_000; i++) flooder.ws.send(frame);
    const closed = await flooder.waitClosed();
    assert.equal(closed.code, 1008);
    assert.match(closed.reason, /rate limited/);

    const sent = await w.call<{ id: string }>("POST", `/api/v1/sessions/${other.id}/messages`, bob.key, {
      content: "still there?",
    });
    assert.equal(sent.status, 201);
    const [m] = await calm.waitFor(1);
    assert.equal(m.data.interaction_id, sent.body.id);
    calm.event(
      "message_added",
      { role: "assistant", content: "yes", interaction_id: sent.body.id },
      other.id,
    );
    calm.event("message_completed", { interaction_id: sent.body.id }, other.id);
    await w.until(
      async () => (await w.server.store.interactions.get(sent.body.id))?.state === "complete",
      "the calm session's answer",
    );
    await calm.close();
  });
});

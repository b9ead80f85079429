// The agent sync channel through a real server (startServer on 127.0.0.1, the embedded store) and
// real WebSockets, with the test playing the agent: a user's message reaches the agent as a
// chat_message, the agent's streamed message_added updates fill the interaction (seen in the list
// and, in several parts, on the SSE stream) and message_completed makes it `complete`; messages sent
// while no agent is connected are delivered once and in order when one connects, also across a
// dropped socket; the queue is bounded (429); cancel reaches the agent and ends the turn
// `cancelled`; a second socket replaces the first (4001); the event stream resumes from
// Last-Event-ID, or starts with a snapshot when it cannot.

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import type { Session } from "../../src/store/index.ts";
import { World } from "../host/host-harness.ts";
import { interactionEvents, SseReader, SyncClient } from "./agent-sync-harness.ts";

interface InteractionView {
  id: string;
  content: string;
  response: string;
  state: string;
  delivery: string;
  agent_connected?: boolean;
  messages: { message_id: string; content: string }[];
}

describe("agent sync", () => {
  let w: World;
  let alice: { key: string; userId: string };

  before(async () => {
    w = await new World().start();
    alice = await w.user("alice");
  });
  after(async () => {
    await w.close();
  });

  async function session(): Promise<{ session: Session; agentKey: string }> {
    const s = await w.server.store.sessions.create({ ownerId: alice.userId, name: "chat" });
    const { apiKey } = await w.server.auth.createSessionKey(s);
    return { session: s, agentKey: apiKey };
  }

  const send = (id: string, content: string, key = alice.key) =>
    w.call<InteractionView & { error?: { code: string } }>("POST", `/api/v1/sessions/${id}/messages`, key, {
      content,
    });
  const list = async (id: string) =>
    (await w.call<InteractionView[]>("GET", `/api/v1/sessions/${id}/interactions`, alice.key)).body;

  it("delivers a message, streams the answer into the interaction and the SSE stream, then completes", async () => {
    const { session: s, agentKey } = await session();
    const agent = await SyncClient.open(w.url, s.id, agentKey);
    const sse = await SseReader.open(`${w.url}/api/v1/sessions/${s.id}/events`, alice.key);
    assert.equal(sse.status, 200);
    await sse.until((e) => e.some((x) => x.event === "session"), "the session event");

    const sent = await send(s.id, "hello agent");
    assert.equal(sent.status, 201);
    assert.equal(sent.body.state, "waiting");
    assert.equal(sent.body.agent_connected, true);
    const [message] = await agent.waitFor(1);
    assert.deepEqual(message, {
      type: "chat_message",
      data: { content: "hello agent", interaction_id: sent.body.id },
    });

    // An event type the API does not know is ignored (and logged): the socket stays open.
    agent.event("tool_call_started", { tool: "grep" }, s.id);
    const parts = ["Echo", "Echo: hello", "Echo: hello agent"];
    for (const content of parts)
      agent.event("message_added", { role: "assistant", content, message_id: "m1" }, s.id);
    agent.event("message_completed", { message_id: "m1" }, s.id);

    await sse.until(
      (e) => interactionEvents(e, sent.body.id).some((d) => d.state === "complete"),
      "the complete interaction on the stream",
    );
    const seen = interactionEvents(sse.events, sent.body.id);
    const responses = [...new Set(seen.map((d) => d.response).filter(Boolean))];
    assert.deepEqual(responses, parts, "each streamed part appears on the stream, in order");
    assert.ok(
      sse.events.every((e) => e.event !== "interaction" || e.id),
      "interaction events carry ids",
    );

    const [turn] = await list(s.id);
    assert.equal(turn.id, sent.body.id);
    assert.equal(turn.content, "hello agent");
    assert.equal(turn.response, "Echo: hello agent");
    assert.equal(turn.state, "complete");
    assert.equal(turn.messages.length, 1, "updates of one message_id replace, not append");
    sse.close();
    await agent.close();
  });

  it("queues while no agent is connected and delivers once, in order, across a dropped socket", async () => {
    const { session: s, agentKey } = await session();
    const first = [];
    for (const text of ["one", "two", "three"]) first.push((await send(s.id, text)).body);
    assert.deepEqual(
      first.map((t) => [t.delivery, t.agent_connected]),
      [
        ["queued", false],
        ["queued", false],
        ["queued", false],
      ],
    );

    const agent = await SyncClient.open(w.url, s.id, agentKey);
    const got = await agent.waitFor(3);
    assert.deepEqual(
      got.map((m) => m.data.content),
      ["one", "two", "three"],
    );
    // The agent answers all three, which acknowledges them.
    for (const m of got) agent.event("message_completed", { interaction_id: m.data.interaction_id }, s.id);
    await w.until(async () => (await list(s.id)).every((t) => t.state === "complete"), "three complete");

    // The socket drops (cut, no close frame); two messages arrive while the agent is away.
    agent.ws.terminate();
    await agent.waitClosed();
    await w.until(async () => (await send(s.id, "four")).status === 201, "four queued");
    await send(s.id, "five");
    const back = await SyncClient.open(w.url, s.id, agentKey);
    const again = await back.waitFor(2);
    assert.deepEqual(
      again.map((m) => m.data.content),
      ["four", "five"],
    );
    // Nothing else comes: the answered ones are never sent again.
    await send(s.id, "six");
    const third = await back.waitFor(3);
    assert.equal(third[2].data.content, "six");
    assert.equal(back.received.length, 3);
    await back.close();
  });

  it("sends an unacknowledged message again to the next socket (the bridge drops repeats)", async () => {
    const { session: s, agentKey } = await session();
    const agent = await SyncClient.open(w.url, s.id, agentKey);
    const sent = await send(s.id, "are you there?");
    await agent.waitFor(1);
    agent.ws.terminate();
    await agent.waitClosed();
    const back = await SyncClient.open(w.url, s.id, agentKey);
    const [again] = await back.waitFor(1);
    assert.equal(again.data.interaction_id, sent.body.id);
    await back.close();
  });

  it("bounds the queue: past 100 waiting messages, 429 RD_ERR_SYNC_QUEUE_FULL", async () => {
    const { session: s } = await session();
    for (let i = 0; i < 100; i++) assert.equal((await send(s.id, `m${i}`)).status, 201);
    const refused = await send(s.id, "one too many");
    assert.equal(refused.status, 429);
    assert.equal(refused.body.error?.code, "RD_ERR_SYNC_QUEUE_FULL");
    assert.equal((await list(s.id)).length, 100);
  });

  it("cancel tells the agent and ends the turn cancelled", async () => {
    const { session: s, agentKey } = await session();
    const agent = await SyncClient.open(w.url, s.id, agentKey);
    const sent = await send(s.id, "write a novel");
    await agent.waitFor(1);
    agent.event("message_added", { role: "assistant", content: "Chapter 1", message_id: "a" }, s.id);
    await w.until(async () => (await list(s.id))[0].response === "Chapter 1", "the first part");
    const cancelled = await w.call<{ interaction_id: string; sent: boolean }>(
      "POST",
      `/api/v1/sessions/${s.id}/cancel`,
      alice.key,
      {},
    );
    assert.equal(cancelled.status, 200);
    assert.deepEqual(cancelled.body, { interaction_id: sent.body.id, sent: true });
    const [, cancel] = await agent.waitFor(2);
    assert.deepEqual(cancel, { type: "cancel_current_turn", data: { interaction_id: sent.body.id } });
    // A late part and a completion for the cancelled turn change nothing.
    agent.event("message_added", { role: "assistant", content: "Chapter 2", message_id: "a" }, s.id);
    agent.event("message_completed", { interaction_id: sent.body.id }, s.id);
    agent.event("ping", {}, s.id);
    const next = await send(s.id, "short one please");
    await agent.waitFor(3);
    const [turn] = await list(s.id);
    assert.equal(turn.state, "cancelled");
    assert.equal(turn.response, "Chapter 1");
    assert.equal((await list(s.id))[1].id, next.body.id);
    await agent.close();
  });

  it("the event stream reports the session's status and whether its agent is connected", async () => {
    const { session: s, agentKey } = await session();
    const sse = await SseReader.open(`${w.url}/api/v1/sessions/${s.id}/events`, alice.key);
    type SessionEvent = { status: string; agent_connected: boolean };
    const sessionEvents = () =>
      sse.events.filter((e) => e.event === "session").map((e) => e.data as SessionEvent);
    await sse.until(() => sessionEvents().length > 0, "the first session event");
    assert.deepEqual(sessionEvents()[0], { session_id: s.id, status: "pending", agent_connected: false });
    const agent = await SyncClient.open(w.url, s.id, agentKey);
    await sse.until(() => sessionEvents().some((e) => e.agent_connected), "agent connected", 15_000);
    await w.server.store.sessions.setStatus(s.id, "stopped", ["pending"]);
    await sse.until(() => sessionEvents().some((e) => e.status === "stopped"), "status stopped", 15_000);
    sse.close();
    await agent.close();
  });

  it("bounds event streams per session (429), and a stream the client closed frees its place", async () => {
    const { session: s } = await session();
    const url = `${w.url}/api/v1/sessions/${s.id}/events`;
    const open: SseReader[] = [];
    for (let i = 0; i < 16; i++) {
      const r = await SseReader.open(url, alice.key);
      assert.equal(r.status, 200);
      open.push(r);
    }
    const refused = await SseReader.open(url, alice.key);
    assert.equal(refused.status, 429);
    for (const r of open) r.close();
    await w.until(async () => {
      const r = await SseReader.open(url, alice.key);
      r.close();
      return r.status === 200;
    }, "a place freed");
  });

  it("a second socket for the session replaces the first with 4001", async () => {
    const { session: s, agentKey } = await session();
    const old = await SyncClient.open(w.url, s.id, agentKey);
    const fresh = await SyncClient.open(w.url, s.id, agentKey);
    const closed = await old.waitClosed();
    assert.equal(closed.code, 4001);
    await send(s.id, "to the new one");
    const [m] = await fresh.waitFor(1);
    assert.equal(m.data.content, "to the new one");
    assert.equal(old.received.length, 0);
    await fresh.close();
  });

  it("the event stream resumes after Last-Event-ID, and starts with a snapshot for an unknown one", async () => {
    const { session: s, agentKey } = await session();
    const agent = await SyncClient.open(w.url, s.id, agentKey);
    const url = `${w.url}/api/v1/sessions/${s.id}/events`;
    const sse = await SseReader.open(url, alice.key);
    await sse.until((e) => e.some((x) => x.event === "session"), "the session event");
    const a = await send(s.id, "first");
    await sse.until((e) => interactionEvents(e, a.body.id).length >= 2, "first queued and sent");
    const lastId = sse.events.filter((e) => e.id).at(-1)!.id!;
    sse.close();

    await agent.waitFor(1);
    agent.event("message_added", { role: "assistant", content: "missed while away", message_id: "x" }, s.id);
    agent.event("message_completed", {}, s.id);
    await w.until(async () => (await list(s.id))[0].state === "complete", "complete while away");

    const resumed = await SseReader.open(url, alice.key, lastId);
    await resumed.until(
      (e) => interactionEvents(e, a.body.id).some((d) => d.state === "complete"),
      "the missed events replayed",
    );
    const replayed = resumed.events.filter((e) => e.event === "interaction");
    assert.ok(replayed.length >= 2, "the update and the completion are replayed");
    assert.ok(
      replayed.every((e) => Number(e.id!.split(".")[1]) > Number(lastId.split(".")[1])),
      "only events after Last-Event-ID",
    );
    assert.ok(!resumed.events.some((e) => e.event === "snapshot"));
    resumed.close();

    const stale = await SseReader.open(url, alice.key, "00000000.1");
    await stale.until((e) => e.some((x) => x.event === "snapshot"), "a snapshot");
    await stale.until(
      (e) => interactionEvents(e, a.body.id).some((d) => d.response === "missed while away"),
      "the interaction as it is now",
    );
    stale.close();
    await agent.close();
  });
});

// One session: its screen, large and live; its clipboard (read and write); the conversation with
// its agent, streaming (GET /api/v1/sessions/{id}/events); and stop, after a confirmation.

import { useEffect, useRef, useState } from "preact/hooks";
import {
  ApiFailure,
  describeFailure,
  getJson,
  type InteractionView,
  type SessionView,
  sendJson,
} from "../api.ts";
import { openStream } from "../events.ts";
import { type LiveState, useLive } from "../live.ts";
import { Screen } from "../screen.tsx";
import { age, Badge, type Message, Notice } from "../ui.tsx";

const ENDED = new Set(["stopping", "stopped", "failed"]);

export function SessionPage({ live, id }: { live: LiveState; id: string }) {
  useLive(live);
  const [missing, setMissing] = useState<string | null>(null);
  const session = live.sessions.get(id);

  useEffect(() => {
    if (live.sessions.has(id)) return;
    getJson<SessionView>(`/api/v1/sessions/${encodeURIComponent(id)}`).then(
      (s) => live.putSession(s),
      (err) => setMissing(describeFailure(err)),
    );
  }, [id]);

  if (!session) {
    return (
      <main>
        <h1>Session</h1>
        <p class={missing ? "notice notice-error" : ""}>{missing ?? "Loading…"}</p>
      </main>
    );
  }
  return (
    <main class="session-page">
      <h1>{session.name}</h1>
      <div class="meta">
        <Badge value={session.status} /> <span>host {session.wolf_instance_id ?? "–"}</span>{" "}
        <span>started {age(session.created_at)}</span>{" "}
        <span class={session.sandbox_connected ? "up" : "down"}>
          {session.sandbox_connected ? "sandbox connected" : "sandbox not connected"}
        </span>
        <code class="id">{session.id}</code>
      </div>
      <div class="session-grid">
        <section aria-label="Screen">
          <Screen
            sessionId={session.id}
            status={session.status}
            connected={session.sandbox_connected}
            label={`Screen of ${session.name}`}
            large
          />
          <StopControl session={session} live={live} />
        </section>
        <div class="side">
          <Clipboard session={session} />
          <Conversation session={session} />
        </div>
      </div>
    </main>
  );
}

function StopControl({ session, live }: { session: SessionView; live: LiveState }) {
  const [asking, setAsking] = useState(false);
  const cancel = useRef<HTMLButtonElement>(null);
  // Keyboard users land on the safe choice of the confirmation.
  useEffect(() => {
    if (asking) cancel.current?.focus();
  }, [asking]);
  const [message, setMessage] = useState<Message | null>(null);
  if (ENDED.has(session.status)) return <Notice message={message} />;
  const stop = async () => {
    setAsking(false);
    setMessage({ tone: "info", text: "Stopping…" });
    // The screen stops asking for live images now: the sandbox's tunnel is about to be cut.
    live.putSession({ ...session, status: "stopping" });
    try {
      const answer = await sendJson<{ message: string; status: string }>(
        "DELETE",
        `/api/v1/external-agents/${encodeURIComponent(session.id)}`,
      );
      live.putSession({ ...session, status: answer.status });
      setMessage({ tone: "ok", text: answer.message });
    } catch (err) {
      setMessage({ tone: "error", text: describeFailure(err) });
    }
  };
  return (
    <div class="stop">
      {asking ? (
        <fieldset class="confirm">
          <legend>Stop this session? Its sandbox ends; the final screenshot is kept.</legend>
          <button type="button" class="danger" onClick={stop}>
            Yes, stop it
          </button>
          <button type="button" ref={cancel} onClick={() => setAsking(false)}>
            Cancel
          </button>
        </fieldset>
      ) : (
        <button type="button" class="danger" onClick={() => setAsking(true)}>
          Stop session
        </button>
      )}
      <Notice message={message} />
    </div>
  );
}

function Clipboard({ session }: { session: SessionView }) {
  const [text, setText] = useState("");
  const [message, setMessage] = useState<Message | null>(null);
  const path = `/api/v1/external-agents/${encodeURIComponent(session.id)}/clipboard`;
  const ended = ENDED.has(session.status);
  const read = async () => {
    try {
      const clip = await getJson<{ type: string; data: string }>(path);
      if (clip.type === "text") {
        setText(clip.data);
        setMessage({ tone: "ok", text: "Clipboard read from the sandbox" });
      } else setMessage({ tone: "info", text: "The sandbox's clipboard holds an image" });
    } catch (err) {
      setMessage({ tone: "error", text: describeFailure(err) });
    }
  };
  const write = async (e: Event) => {
    e.preventDefault();
    try {
      await sendJson("POST", path, { type: "text", data: text });
      setMessage({ tone: "ok", text: "Clipboard set in the sandbox" });
    } catch (err) {
      setMessage({ tone: "error", text: describeFailure(err) });
    }
  };
  return (
    <section class="panel" aria-labelledby="clipboard-title">
      <h2 id="clipboard-title">Clipboard</h2>
      <form onSubmit={write}>
        <label for="clipboard-text">Sandbox clipboard text</label>
        <textarea
          id="clipboard-text"
          rows={3}
          value={text}
          onInput={(e) => setText((e.target as HTMLTextAreaElement).value)}
        />
        <div class="row">
          <button type="submit" disabled={ended}>
            Set clipboard
          </button>
          <button type="button" onClick={read} disabled={ended}>
            Read clipboard
          </button>
        </div>
      </form>
      <Notice message={message} />
    </section>
  );
}

function Conversation({ session }: { session: SessionView }) {
  const [turns, setTurns] = useState<InteractionView[]>([]);
  const [agent, setAgent] = useState<boolean | null>(null);
  const [draft, setDraft] = useState("");
  const [message, setMessage] = useState<Message | null>(null);
  const base = `/api/v1/sessions/${encodeURIComponent(session.id)}`;

  useEffect(() => {
    const upsert = (turn: InteractionView) =>
      setTurns((list) => {
        const i = list.findIndex((t) => t.id === turn.id);
        if (i < 0) return [...list, turn];
        if (list[i].updated_at > turn.updated_at) return list; // a late read of an older version
        const next = list.slice();
        next[i] = turn;
        return next;
      });
    // At each (re)connect the turns are read whole; the stream then brings every change to them.
    const load = () =>
      getJson<InteractionView[]>(`${base}/interactions`).then(
        (list) => {
          for (const t of list) upsert(t);
        },
        (err) => setMessage({ tone: "error", text: describeFailure(err) }),
      );
    const close = openStream(`${base}/events`, {
      onOpen: () => void load(),
      onEvent: (type, data) => {
        if (type === "interaction") upsert(data as InteractionView);
        else if (type === "session") setAgent((data as { agent_connected: boolean }).agent_connected);
      },
    });
    return close;
  }, [base]);

  const send = async (e: Event) => {
    e.preventDefault();
    try {
      await sendJson("POST", `${base}/messages`, { content: draft });
      setDraft("");
      setMessage(null);
    } catch (err) {
      const full = err instanceof ApiFailure && err.status === 429;
      setMessage({
        tone: "error",
        text: full ? "The agent has too many messages waiting" : describeFailure(err),
      });
    }
  };

  return (
    <section class="panel" aria-labelledby="chat-title">
      <h2 id="chat-title">Agent</h2>
      <p class="meta">{agent === null ? "…" : agent ? "agent connected" : "agent not connected"}</p>
      <ol class="chat" aria-live="polite">
        {turns.length === 0 ? <li class="empty">No messages yet</li> : null}
        {turns.map((t) => (
          <li key={t.id}>
            <div class="turn-user">
              <span class="who">you</span> {t.content}
            </div>
            {t.response ? (
              <div class="turn-agent">
                <span class="who">agent</span> {t.response}
              </div>
            ) : null}
            {t.state !== "complete" ? <Badge value={t.state} /> : null}
          </li>
        ))}
      </ol>
      <form onSubmit={send} class="row">
        <label for="chat-input" class="visually-hidden">
          Message to the agent
        </label>
        <input
          id="chat-input"
          value={draft}
          required
          disabled={ENDED.has(session.status)}
          placeholder="Message to the agent"
          onInput={(e) => setDraft((e.target as HTMLInputElement).value)}
        />
        <button type="submit" disabled={ENDED.has(session.status)}>
          Send
        </button>
      </form>
      <Notice message={message} />
    </section>
  );
}

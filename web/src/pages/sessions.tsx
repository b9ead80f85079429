// The home page: the signed-in user's sessions (an admin's own too), newest first, each with its
// status, host, age, whether its sandbox is connected, and its screen, live.

import type { SessionView } from "../api.ts";
import { type LiveState, useLive } from "../live.ts";
import { Screen } from "../screen.tsx";
import { age, Badge } from "../ui.tsx";

export function sortedSessions(live: LiveState, ownerId?: string | null): SessionView[] {
  return [...live.sessions.values()]
    .filter((s) => !ownerId || s.owner === ownerId)
    .sort((a, b) => (a.created_at < b.created_at ? 1 : a.created_at > b.created_at ? -1 : 0));
}

export function Sessions({ live, userId }: { live: LiveState; userId: string | null }) {
  useLive(live);
  const sessions = sortedSessions(live, userId);
  return (
    <main>
      <h1>Sessions</h1>
      {live.error ? <p class="notice notice-error">{live.error}</p> : null}
      {sessions.length === 0 ? (
        <p class="empty">
          No sessions yet. Start one from <a href="/ui/projects">Projects</a>.
        </p>
      ) : (
        <ul class="cards" aria-label="Sessions">
          {sessions.map((s) => (
            <li key={s.id} class="card" data-session-id={s.id}>
              <a href={`/ui/sessions/${s.id}`} class="card-link">
                <Screen
                  sessionId={s.id}
                  status={s.status}
                  connected={s.sandbox_connected}
                  label={`Screen of ${s.name}`}
                />
                <div class="card-body">
                  <strong class="card-title">{s.name}</strong>
                  <div class="meta">
                    <Badge value={s.status} /> <span>host {s.wolf_instance_id ?? "–"}</span>{" "}
                    <span>{age(s.created_at)}</span>{" "}
                    <span class={s.sandbox_connected ? "up" : "down"}>
                      {s.sandbox_connected ? "sandbox connected" : "sandbox not connected"}
                    </span>
                  </div>
                </div>
              </a>
            </li>
          ))}
        </ul>
      )}
    </main>
  );
}

// Admin pages: hosts (load against capacity, online or offline, last heartbeat, tunnel state), live
// tunnels (runner, transport, RTT, streams, bytes, owner) and users with their keys. Hosts and
// tunnels come live from the event stream; the API refuses all of this to a non-admin key anyway.

import { useEffect, useState } from "preact/hooks";
import { describeFailure, getJson, type KeyView, sendJson, type UserView } from "../api.ts";
import { type LiveState, useLive } from "../live.ts";
import { age, Badge, bytes, type Message, Notice } from "../ui.tsx";

export function Hosts({ live }: { live: LiveState }) {
  useLive(live);
  const hosts = [...live.hosts.values()].sort((a, b) => (a.id < b.id ? -1 : 1));
  return (
    <main>
      <h1>Hosts</h1>
      {hosts.length === 0 ? <p class="empty">No sandbox hosts.</p> : null}
      <div class="table-wrap">
        <table>
          <thead>
            <tr>
              <th scope="col">Host</th>
              <th scope="col">Status</th>
              <th scope="col">Load</th>
              <th scope="col">Last heartbeat</th>
              <th scope="col">Tunnel</th>
            </tr>
          </thead>
          <tbody>
            {hosts.map((h) => (
              <tr key={h.id} data-host-id={h.id}>
                <th scope="row">{h.name === h.id ? h.id : `${h.name} (${h.id})`}</th>
                <td>
                  <Badge value={h.status} />
                </td>
                <td>
                  <meter
                    min={0}
                    max={h.max_sandboxes}
                    value={h.connected_sandboxes}
                    aria-label={`Load of ${h.id}`}
                  />{" "}
                  {h.connected_sandboxes}/{h.max_sandboxes}
                </td>
                <td>{age(h.last_heartbeat)}</td>
                <td class={h.tunnel_connected ? "up" : "down"}>{h.tunnel_connected ? "up" : "down"}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    </main>
  );
}

export function Tunnels({ live }: { live: LiveState }) {
  useLive(live);
  const tunnels = [...live.tunnels.values()].sort((a, b) => (a.runner_id < b.runner_id ? -1 : 1));
  return (
    <main>
      <h1>Live tunnels</h1>
      <p class="meta">
        Tunnels come and go live; figures are as of their arrival or the last{" "}
        <button type="button" class="link" onClick={() => void live.reload()}>
          refresh
        </button>
        .
      </p>
      {tunnels.length === 0 ? <p class="empty">No live tunnels.</p> : null}
      <div class="table-wrap">
        <table>
          <thead>
            <tr>
              <th scope="col">Runner</th>
              <th scope="col">Transport</th>
              <th scope="col">RTT</th>
              <th scope="col">Streams</th>
              <th scope="col">Bytes in / out</th>
              <th scope="col">Owner</th>
            </tr>
          </thead>
          <tbody>
            {tunnels.map((t) => (
              <tr key={t.runner_id}>
                <th scope="row">{t.runner_id}</th>
                <td>
                  {t.transport ?? "–"} {t.protocol ?? ""}
                </td>
                <td>{typeof t.rtt_ms === "number" ? `${t.rtt_ms.toFixed(1)} ms` : "–"}</td>
                <td>{t.active_streams ?? "–"}</td>
                <td>
                  {bytes(t.bytes_in)} / {bytes(t.bytes_out)}
                </td>
                <td>{t.owner ?? (t.session_id ? "a user" : "–")}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    </main>
  );
}

export function Users() {
  const [users, setUsers] = useState<UserView[]>([]);
  const [keys, setKeys] = useState<Record<string, KeyView[]>>({});
  const [name, setName] = useState("");
  const [admin, setAdmin] = useState(false);
  const [shown, setShown] = useState<{ label: string; key: string } | null>(null);
  const [message, setMessage] = useState<Message | null>(null);

  const load = async () => {
    try {
      const list = await getJson<UserView[]>("/api/v1/users");
      setUsers(list);
      const all = await Promise.all(list.map((u) => getJson<KeyView[]>(`/api/v1/users/${u.id}/keys`)));
      setKeys(Object.fromEntries(list.map((u, i) => [u.id, all[i]])));
    } catch (err) {
      setMessage({ tone: "error", text: describeFailure(err) });
    }
  };
  useEffect(() => void load(), []);

  const act = async (work: () => Promise<void>) => {
    try {
      await work();
      await load();
    } catch (err) {
      setMessage({ tone: "error", text: describeFailure(err) });
    }
  };
  const createUser = (e: Event) => {
    e.preventDefault();
    void act(async () => {
      const u = await sendJson<{ name: string; api_key: string }>("POST", "/api/v1/users", { name, admin });
      setShown({ label: `Key of new user ${u.name}`, key: u.api_key });
      setMessage({ tone: "ok", text: `User ${u.name} created` });
      setName("");
    });
  };
  const createKey = (user: UserView, access: "read" | "write") =>
    act(async () => {
      const k = await sendJson<{ api_key: string }>("POST", `/api/v1/users/${user.id}/keys`, { access });
      setShown({ label: `New ${access} key of ${user.name}`, key: k.api_key });
      setMessage({ tone: "ok", text: `Key created for ${user.name}` });
    });
  const revoke = (user: UserView, key: KeyView) =>
    act(async () => {
      await sendJson("DELETE", `/api/v1/users/${user.id}/keys/${key.id}`);
      setMessage({ tone: "ok", text: `Key ${key.prefix}… of ${user.name} revoked` });
    });

  return (
    <main>
      <h1>Users and keys</h1>
      <Notice message={message} />
      {shown ? (
        <div class="panel" role="status">
          <label for="shown-key">{shown.label} (shown once: copy it now)</label>
          <input
            id="shown-key"
            readOnly
            value={shown.key}
            onFocus={(e) => (e.target as HTMLInputElement).select()}
          />
          <button type="button" onClick={() => setShown(null)}>
            Done
          </button>
        </div>
      ) : null}
      <form class="panel row" onSubmit={createUser}>
        <label for="new-user">New user name</label>
        <input
          id="new-user"
          required
          value={name}
          onInput={(e) => setName((e.target as HTMLInputElement).value)}
        />
        <label class="check">
          <input
            type="checkbox"
            checked={admin}
            onChange={(e) => setAdmin((e.target as HTMLInputElement).checked)}
          />{" "}
          admin
        </label>
        <button type="submit">Create user</button>
      </form>
      {users.map((u) => (
        <section key={u.id} class="panel" aria-label={`User ${u.name}`}>
          <h2>
            {u.name} {u.admin ? <Badge value="admin" /> : null}
          </h2>
          <ul class="list">
            {(keys[u.id] ?? []).map((k) => (
              <li key={k.id}>
                <div>
                  <code>{k.prefix}…</code> <Badge value={k.scope} /> <Badge value={k.access} />{" "}
                  <span class="meta">
                    {k.name || "unnamed"} · used {age(k.last_used_at)}
                  </span>
                </div>
                <button
                  type="button"
                  class="danger"
                  onClick={() => revoke(u, k)}
                  aria-label={`Revoke key ${k.prefix} of ${u.name}`}
                >
                  Revoke
                </button>
              </li>
            ))}
          </ul>
          <div class="row">
            <button type="button" onClick={() => createKey(u, "write")}>
              New write key
            </button>
            <button type="button" onClick={() => createKey(u, "read")}>
              New read-only key
            </button>
          </div>
        </section>
      ))}
    </main>
  );
}

// Sign-in: an API key, checked against GET /api/v1/users/me and kept for this tab only.

import { useState } from "preact/hooks";
import { describeFailure, getJson, type Me, storeKey } from "../api.ts";
import { type Message, Notice } from "../ui.tsx";

export function SignIn({ onSignedIn }: { onSignedIn: (me: Me) => void }) {
  const [key, setKey] = useState("");
  const [message, setMessage] = useState<Message | null>(null);
  const [busy, setBusy] = useState(false);

  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setMessage(null);
    try {
      storeKey(key.trim());
      const me = await getJson<Me>("/api/v1/users/me");
      if (me.scope !== "user" && me.scope !== "admin") {
        storeKey(null);
        setMessage({
          tone: "error",
          text: `A ${me.scope} key cannot use the dashboard: sign in with a user key`,
        });
        return;
      }
      onSignedIn(me);
    } catch (err) {
      storeKey(null);
      setMessage({ tone: "error", text: describeFailure(err) });
    } finally {
      setBusy(false);
    }
  };

  return (
    <main class="sign-in">
      <h1>revdial</h1>
      <form onSubmit={submit}>
        <label for="api-key">API key</label>
        <input
          id="api-key"
          name="api-key"
          type="password"
          autoComplete="off"
          required
          value={key}
          onInput={(e) => setKey((e.target as HTMLInputElement).value)}
        />
        <button type="submit" disabled={busy}>
          Sign in
        </button>
        <p class="hint">The key is kept in this tab only, until you sign out or close it.</p>
        <Notice message={message} />
      </form>
    </main>
  );
}

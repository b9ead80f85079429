// The revdial dashboard: sign in with an API key (kept in this tab's sessionStorage), then the
// pages this key may see. Admin pages are listed for admin keys only, and the API refuses their
// routes to anyone else.

import { render } from "preact";
import { useEffect, useMemo, useState } from "preact/hooks";
import { describeFailure, getJson, type Me, storedKey, storeKey } from "./api.ts";
import { LiveState, useLive } from "./live.ts";
import { Hosts, Tunnels, Users } from "./pages/admin.tsx";
import { Projects } from "./pages/projects.tsx";
import { SessionPage } from "./pages/session.tsx";
import { Sessions } from "./pages/sessions.tsx";
import { SignIn } from "./pages/sign-in.tsx";
import { interceptLinks, navigate, usePath } from "./router.ts";

interface NavItem {
  path: string;
  label: string;
  admin?: boolean;
}

const NAV: NavItem[] = [
  { path: "/ui/", label: "Sessions" },
  { path: "/ui/projects", label: "Projects" },
  { path: "/ui/hosts", label: "Hosts", admin: true },
  { path: "/ui/tunnels", label: "Tunnels", admin: true },
  { path: "/ui/users", label: "Users", admin: true },
];

function App() {
  const [me, setMe] = useState<Me | null>(null);
  const [checking, setChecking] = useState(storedKey() !== null);
  const [error, setError] = useState<string | null>(null);

  useEffect(() => {
    if (!storedKey()) return;
    getJson<Me>("/api/v1/users/me").then(
      (m) => {
        setMe(m);
        setChecking(false);
      },
      (err) => {
        storeKey(null);
        setError(describeFailure(err));
        setChecking(false);
      },
    );
  }, []);

  if (checking) return <p class="loading">Loading…</p>;
  if (!me)
    return (
      <>
        {error ? <p class="notice notice-error">{error}</p> : null}
        <SignIn onSignedIn={setMe} />
      </>
    );
  return (
    <Signed
      me={me}
      onSignOut={() => {
        storeKey(null);
        setMe(null);
        navigate("/ui/", true);
      }}
    />
  );
}

function Signed({ me, onSignOut }: { me: Me; onSignOut: () => void }) {
  const live = useMemo(() => new LiveState(me.admin), [me]);
  useEffect(() => {
    live.start();
    return () => live.stop();
  }, [live]);
  useLive(live);
  const path = usePath();
  const nav = NAV.filter((n) => !n.admin || me.admin);
  return (
    <>
      <header class="top">
        <a href="/ui/" class="brand">
          revdial
        </a>
        <nav aria-label="Pages">
          {nav.map((n) => (
            <a key={n.path} href={n.path} aria-current={isCurrent(path, n.path) ? "page" : undefined}>
              {n.label}
            </a>
          ))}
        </nav>
        <span class={`stream stream-${live.stream}`} title="Live updates">
          {live.stream === "live" ? "live" : live.stream === "connecting" ? "connecting…" : "reconnecting…"}
        </span>
        <span class="who">
          {me.name ?? "?"}
          {me.admin ? " (admin)" : ""}
          {me.access === "read" ? " · read-only" : ""}
        </span>
        <button type="button" onClick={onSignOut}>
          Sign out
        </button>
      </header>
      <Page path={path} me={me} live={live} />
    </>
  );
}

function isCurrent(path: string, item: string): boolean {
  if (item === "/ui/")
    return path === "/" || path === "/ui" || path === "/ui/" || path.startsWith("/ui/sessions");
  return path.startsWith(item);
}

function Page({ path, me, live }: { path: string; me: Me; live: LiveState }) {
  const session = /^\/ui\/sessions\/([^/]+)$/.exec(path);
  if (session) return <SessionPage key={session[1]} live={live} id={decodeURIComponent(session[1])} />;
  if (path === "/" || path === "/ui" || path === "/ui/" || path === "/ui/sessions")
    return <Sessions live={live} userId={me.id} />;
  if (path === "/ui/projects") return <Projects />;
  const admin: Record<string, () => preact.JSX.Element> = {
    "/ui/hosts": () => <Hosts live={live} />,
    "/ui/tunnels": () => <Tunnels live={live} />,
    "/ui/users": () => <Users />,
  };
  const page = admin[path];
  if (page) {
    if (!me.admin)
      return (
        <main>
          <h1>Not allowed</h1>
          <p class="notice notice-error" role="alert">
            This page is for administrators; your key is not an admin key.
          </p>
        </main>
      );
    return page();
  }
  return (
    <main>
      <h1>Not found</h1>
      <p>
        No page {path}. Go to <a href="/ui/">Sessions</a>.
      </p>
    </main>
  );
}

interceptLinks();
const root = document.getElementById("app");
if (root) render(<App />, root);

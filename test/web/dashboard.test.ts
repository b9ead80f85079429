// The web dashboard in a real browser (Debian's Chromium driven by playwright-core) against a real
// server and a real sandbox host (`revdial wolf run`, whose sandboxes run Xvfb with xlogo on it):
// a user signs in with their key, forks the sample project and starts a task; the session appears
// with no reload and its thumbnail becomes the sandbox's real screen (pixels compared with the
// API's own screenshot), refreshed with If-None-Match (304s) and not at all while the tab is
// hidden; the clipboard set from the page is what the API reads back; a stop from the page shows
// live on another tab, with the final screenshot. Another user's key sees none of it and no admin
// page (the API refuses those routes to it too). An admin sees hosts, tunnels, users; a key made
// and revoked on the users page stops working. Any console error fails the test. A screenshot of
// each page goes to test-artifacts/web/.

import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { chmod, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { type Browser, type BrowserContext, chromium, type Page } from "playwright-core";
import sharp from "sharp";
import { exampleAgentCommand } from "../../src/agent/example-agent.ts";
import { type RunningServer, startServer } from "../../src/api/server.ts";
import { silentLogger } from "../../src/common/logger.ts";
import { missingTools } from "../agent/desktop/xvfb.ts";
import { pollUntil, waitConnected } from "../helpers/tunnel-harness.ts";
import { type CliProcess, startCli } from "../tls/cli-process.ts";

const CHROMIUM = process.env.REVDIAL_TEST_CHROMIUM ?? "/usr/bin/chromium";
const ARTIFACTS = new URL("../../test-artifacts/web/", import.meta.url).pathname;
const CHROMIUM_FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
/** What the sandbox shows: an xlogo window in a colour no empty screen has. */
const APP = "xlogo -geometry 640x400+100+80 -bg '#1e88e5' -fg '#ffeb3b'";

const skip = !existsSync(CHROMIUM)
  ? `SKIPPED: no Chromium at ${CHROMIUM} (apt-get install chromium)`
  : missingTools("Xvfb", "xlogo");
if (skip) process.stdout.write(`# web dashboard tests ${skip}\n`);

/**
 * What runs in the page, as source text: this file is type-checked for Node (no DOM library), and
 * the browser evaluates these strings itself.
 */
const IN_PAGE = {
  domContentLoaded: "Math.round(performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd)",
  markPage: "window.notReloaded = true",
  pageMarked: "window.notReloaded === true",
  /** The image as the page decoded it, through a canvas, as a lossless PNG data URL. */
  imageAsPng: (selector: string) => `(() => {
    const el = document.querySelector(${JSON.stringify(selector)});
    const canvas = document.createElement("canvas");
    canvas.width = el.naturalWidth;
    canvas.height = el.naturalHeight;
    canvas.getContext("2d").drawImage(el, 0, 0);
    return canvas.toDataURL("image/png");
  })()`,
  visibility: (state: "hidden" | "visible") =>
    `Object.defineProperty(document, "visibilityState", { value: "${state}", configurable: true });
     document.dispatchEvent(new Event("visibilitychange"))`,
  sidewaysOverflow: "document.documentElement.scrollWidth - window.innerWidth",
  storedItems: "sessionStorage.length",
};

interface Tab {
  page: Page;
  errors: string[];
}

describe("the web dashboard in Chromium", { skip }, () => {
  let dir: string;
  let server: RunningServer;
  let host: CliProcess;
  let browser: Browser;
  let context: BrowserContext;
  let alice: { id: string; key: string };
  let bob: { id: string; key: string };
  let sessionId: string;
  const tabs: Tab[] = [];
  const loadTimes: Record<string, number> = {};

  const api = (path: string, key: string, init: RequestInit = {}) =>
    fetch(`${server.url}${path}`, {
      ...init,
      headers: { authorization: `Bearer ${key}`, "content-type": "application/json", ...init.headers },
    });

  async function createUser(name: string) {
    const res = await api("/api/v1/users", server.adminKey!, {
      method: "POST",
      body: JSON.stringify({ name }),
    });
    assert.equal(res.status, 201);
    const body = (await res.json()) as { id: string; api_key: string };
    return { id: body.id, key: body.api_key };
  }

  /** A new tab (its own sessionStorage) whose console errors are collected. */
  async function openTab(): Promise<Tab> {
    const page = await context.newPage();
    const tab: Tab = { page, errors: [] };
    page.on("console", (m) => {
      if (m.type() === "error") tab.errors.push(m.text());
    });
    page.on("pageerror", (e) => tab.errors.push(`page error: ${e.message}`));
    // Which request a "Failed to load resource" was: the console does not say.
    page.on("response", (r) => {
      if (r.status() >= 500)
        tab.errors.push(`${r.request().method()} ${new URL(r.url()).pathname}: ${r.status()}`);
    });
    tabs.push(tab);
    return tab;
  }

  async function signIn(tab: Tab, key: string, shot?: string): Promise<void> {
    const { page } = tab;
    await page.goto(`${server.url}/`);
    await page.getByLabel("API key").waitFor();
    if (shot) await save(page, shot);
    // By keyboard: the labelled field, then Enter submits.
    await page.getByLabel("API key").fill(key);
    await page.getByLabel("API key").press("Enter");
    await page.getByRole("heading", { name: "Sessions" }).waitFor();
    await page.locator(".stream-live").waitFor();
  }

  async function save(page: Page, name: string): Promise<void> {
    await page.screenshot({ path: join(ARTIFACTS, `${name}.png`) });
  }

  /** Opens a page through the nav (no reload); records how long until its heading shows, for the report. */
  async function visit(page: Page, label: string, heading: string) {
    const t0 = Date.now();
    await page.getByRole("navigation", { name: "Pages" }).getByRole("link", { name: label }).click();
    await page.getByRole("heading", { name: heading, exact: true }).waitFor();
    loadTimes[`${label} (in app)`] ??= Date.now() - t0;
  }

  /** Loads `path` afresh (a reload of the whole app, key kept in the tab); records the time to `heading`. */
  async function load(page: Page, path: string, heading: string) {
    const t0 = Date.now();
    await page.goto(`${server.url}${path}`);
    await page.getByRole("heading", { name: heading, exact: true }).waitFor();
    loadTimes[`${path} (full load)`] ??= Date.now() - t0;
  }

  async function pixels(bytes: Buffer) {
    const { data, info } = await sharp(bytes).removeAlpha().raw().toBuffer({ resolveWithObject: true });
    return { data, width: info.width, height: info.height };
  }

  before(async () => {
    await mkdir(ARTIFACTS, { recursive: true });
    dir = await mkdtemp(join(tmpdir(), "revdial-web-"));
    server = await startServer({ listen: "127.0.0.1:0", dataDir: join(dir, "data"), logger: silentLogger() });
    const created = await api("/api/v1/wolf-instances", server.adminKey!, {
      method: "POST",
      body: JSON.stringify({ id: "web", max_sandboxes: 2 }),
    });
    assert.equal(created.status, 201);
    const keyFile = join(dir, "host.key");
    await writeFile(keyFile, ((await created.json()) as { key: string }).key, { mode: 0o600 });
    await chmod(keyFile, 0o600);
    host = startCli(
      [
        "wolf",
        "run",
        "--server",
        server.url,
        "--id",
        "web",
        "--token-file",
        keyFile,
        "--app",
        APP,
        "--agent-command",
        exampleAgentCommand(),
      ],
      {},
    );
    await waitConnected(server.registry, "wolf-web", 30_000);
    alice = await createUser("alice");
    bob = await createUser("bob");
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_FLAGS });
    context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  });

  after(async () => {
    await context?.close().catch(() => {});
    await browser?.close().catch(() => {});
    await host?.stop();
    await server?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
    const times = Object.entries(loadTimes).map(([k, v]) => `${k} ${v} ms`);
    if (times.length)
      process.stdout.write(`# dashboard page loads (to the heading shown): ${times.join(", ")}\n`);
  });

  it("sign in, fork, start a task: the session appears with no reload and its thumbnail is the sandbox's screen", async () => {
    const tab = await openTab();
    const { page } = tab;
    await signIn(tab, alice.key, "sign-in");
    loadTimes["first page, DOMContentLoaded"] = await page.evaluate<number>(IN_PAGE.domContentLoaded);
    await page.evaluate(IN_PAGE.markPage);
    await visit(page, "Projects", "Projects");
    await page.getByRole("button", { name: "Fork Modern Todo App" }).click();
    await page.getByText(/Forked modern-todo-app into project/).waitFor();
    await save(page, "projects");
    const start = page.getByRole("button", { name: "Start Fix delete bug" });
    await start.click();
    const started = page.getByRole("status").filter({ hasText: "Started Fix delete bug" });
    await started.waitFor({ timeout: 60_000 });
    sessionId = (await started.getByRole("link").first().textContent())!.replace("session ", "");
    assert.match(sessionId, /^ses_[0-9a-z]{26}$/);

    const shots: number[] = [];
    page.on("response", (r) => {
      if (r.url().includes(`/external-agents/${sessionId}/screenshot`)) shots.push(r.status());
    });
    await visit(page, "Sessions", "Sessions");
    const card = page.locator(`[data-session-id="${sessionId}"]`);
    await card.getByText("running").waitFor({ timeout: 30_000 });
    const img = card.locator("img");
    await img.waitFor({ timeout: 30_000 });
    assert.equal(await page.evaluate(IN_PAGE.pageMarked), true, "the page was not reloaded");

    // The thumbnail's bytes, decoded, against the API's own screenshot (the xlogo may still be
    // mapping: compare once both show it).
    // The image as the page decoded it, through a canvas (lossless PNG), read again at each try.
    const readThumb = async () => {
      const url = (await page.evaluate(IN_PAGE.imageAsPng(`[data-session-id="${sessionId}"] img`))) as string;
      return pixels(Buffer.from(url.slice(url.indexOf(",") + 1), "base64"));
    };
    const blue = (p: { data: Buffer }) => {
      for (let i = 0; i < p.data.length; i += 3)
        if (p.data[i] === 0x1e && p.data[i + 1] === 0x88 && p.data[i + 2] === 0xe5) return true;
      return false;
    };
    let last = "";
    await pollUntil(
      async () => {
        const thumb = await readThumb();
        const res = await api(`/api/v1/external-agents/${sessionId}/screenshot`, alice.key);
        const own = await pixels(Buffer.from(await res.arrayBuffer()));
        last = `thumb ${thumb.width}x${thumb.height} blue=${blue(thumb)}, api ${own.width}x${own.height} blue=${blue(own)}`;
        return blue(own) && blue(thumb) && thumb.width === own.width && thumb.data.equals(own.data);
      },
      "the thumbnail shows the sandbox's screen",
      20_000,
      300,
    ).catch((err: Error) => assert.fail(`${err.message}: ${last}`));
    // Unchanged screen: the page's next refreshes are 304s.
    await pollUntil(() => shots.includes(304), "a 304 for an unchanged screen", 10_000, 100);
    assert.ok(
      shots.every((s) => s === 200 || s === 304),
      `screenshot answers: ${shots}`,
    );
    await save(page, "sessions");

    // Hidden tab: no more screenshot requests (one in flight may finish).
    await page.evaluate(IN_PAGE.visibility("hidden"));
    await new Promise((r) => setTimeout(r, 300));
    const hiddenAt = shots.length;
    await new Promise((r) => setTimeout(r, 2500));
    assert.equal(shots.length, hiddenAt, "no screenshot requests while the tab is hidden");
    await page.evaluate(IN_PAGE.visibility("visible"));
    await pollUntil(() => shots.length > hiddenAt, "refreshes resume once visible", 5000, 100);

    // Phone width: the page fits, with nothing to scroll sideways.
    await page.setViewportSize({ width: 390, height: 844 });
    const overflow = await page.evaluate<number>(IN_PAGE.sidewaysOverflow);
    assert.ok(overflow <= 0, `the sessions page is ${overflow}px wider than a phone`);
    await save(page, "sessions-phone");
    await page.setViewportSize({ width: 1280, height: 800 });
    assert.deepEqual(tab.errors, []);
  });

  it("the clipboard set from the session page is what the API reads; a stop shows live, with the final screenshot", async () => {
    const watcher = await openTab();
    await signIn(watcher, alice.key);
    const watched = watcher.page.locator(`[data-session-id="${sessionId}"]`);
    await watched.getByText("running").waitFor();

    const { page, errors } = tabs[0];
    await page.locator(`[data-session-id="${sessionId}"] a`).click();
    await page.getByRole("heading", { name: "Fix delete bug" }).waitFor();
    await page.locator(".screen-large img").waitFor();
    const text = `from the dashboard ${Date.now()} ünïcødé`;
    await page.getByLabel("Sandbox clipboard text").fill(text);
    await page.getByRole("button", { name: "Set clipboard" }).click();
    await page.getByText("Clipboard set in the sandbox").waitFor();
    const clip = await api(`/api/v1/external-agents/${sessionId}/clipboard`, alice.key);
    assert.deepEqual(await clip.json(), { type: "text", data: text });
    // The conversation streams: the task's brief went to the agent at start; a message typed here
    // gets the example agent's answer, live.
    await page.getByText("agent connected", { exact: true }).waitFor();
    await page.getByText("You said: Fix delete bug").waitFor();
    await page.getByLabel("Message to the agent").fill("hello agent");
    await page.getByRole("button", { name: "Send" }).click();
    await page.getByText("You said: hello agent").waitFor();
    await save(page, "session");

    await page.getByRole("button", { name: "Stop session" }).click();
    await save(page, "session-stop-confirm");
    await page.getByRole("button", { name: "Yes, stop it" }).click();
    await page.getByText("Final screenshot").waitFor({ timeout: 30_000 });
    // The other tab was told by the event stream: status, then the final screenshot.
    await watched.getByText("stopped", { exact: true }).waitFor({ timeout: 30_000 });
    await watched.getByText("Final screenshot").waitFor({ timeout: 10_000 });
    const listed = (await (await api(`/api/v1/sessions/${sessionId}`, alice.key)).json()) as {
      status: string;
    };
    assert.equal(listed.status, "stopped");
    await save(page, "session-stopped");
    assert.deepEqual(errors, []);
    assert.deepEqual(watcher.errors, []);
  });

  it("another user's key sees none of those sessions and no admin page; the API refuses it the admin routes", async () => {
    const stream = await api("/api/v1/events", bob.key);
    assert.equal(stream.status, 200);
    const tab = await openTab();
    await signIn(tab, bob.key);
    const { page } = tab;
    await page.getByText("No sessions yet").waitFor();
    assert.equal(await page.locator("[data-session-id]").count(), 0);
    const links = await page.getByRole("navigation", { name: "Pages" }).getByRole("link").allTextContents();
    assert.deepEqual(links, ["Sessions", "Projects"]);
    await page.goto(`${server.url}/ui/hosts`);
    await page.getByRole("heading", { name: "Not allowed" }).waitFor();
    await page.goto(`${server.url}/ui/sessions/${sessionId}`);
    await page.getByText(`Not found: session ${sessionId} not found`).waitFor();
    for (const path of ["/api/v1/wolf-instances", "/api/v1/revdial/connections", "/api/v1/users"]) {
      const res = await api(path, bob.key);
      assert.equal(res.status, 403, path);
    }
    const keys = await api(`/api/v1/users/${alice.id}/keys`, bob.key);
    assert.equal(keys.status, 403);
    // Bob's event stream saw nothing of Alice's session while it was stopped and looked at.
    const seen = await readFor(stream, 1000);
    assert.match(seen, /event: ready/);
    assert.doesNotMatch(seen, new RegExp(sessionId));
    // The sign-out forgets the key: a reload asks for one again.
    await page.goto(`${server.url}/ui/`);
    await page.getByRole("button", { name: "Sign out" }).click();
    await page.getByLabel("API key").waitFor();
    await page.reload();
    await page.getByLabel("API key").waitFor();
    assert.equal(await page.evaluate(IN_PAGE.storedItems), 0);
    // A 404 session page shows the error as text; the browser logs the 404 itself, and nothing else.
    assert.deepEqual(
      tab.errors.filter((e) => !/status of 404/.test(e)),
      [],
    );
  });

  it("an admin sees hosts, tunnels and users; a key created and revoked there stops working", async () => {
    const tab = await openTab();
    const { page } = tab;
    await signIn(tab, server.adminKey!);
    await load(page, "/ui/hosts", "Hosts");
    const row = page.locator('[data-host-id="web"]');
    await row.getByText("online").waitFor();
    await row.getByText("0/2").waitFor();
    await row.getByText("up", { exact: true }).waitFor();
    await save(page, "hosts");
    await load(page, "/ui/tunnels", "Live tunnels");
    await page.getByRole("rowheader", { name: "wolf-web" }).waitFor();
    await save(page, "tunnels");
    await load(page, "/ui/projects", "Projects");
    await load(page, `/ui/sessions/${sessionId}`, "Fix delete bug");
    await page.getByText("Final screenshot").waitFor();
    await load(page, "/ui/", "Sessions");
    await visit(page, "Users", "Users and keys");
    const bobs = page.getByRole("region", { name: "User bob" });
    await bobs.getByRole("button", { name: "New read-only key" }).click();
    const shown = page.getByLabel(/New read key of bob/);
    await shown.waitFor();
    const key = await shown.inputValue();
    assert.equal((await api("/api/v1/users/me", key)).status, 200);
    await save(page, "users");
    const revoke = bobs.getByRole("button", { name: /^Revoke key/ });
    assert.equal(await revoke.count(), 2);
    await revoke.last().click();
    await page.getByText(/revoked/).waitFor();
    assert.equal((await api("/api/v1/users/me", key)).status, 401);
    assert.equal((await api("/api/v1/users/me", bob.key)).status, 200, "bob's first key still works");
    assert.deepEqual(tab.errors, []);
  });
});

/** What a streamed response carries within `ms`, then the stream is cancelled. */
async function readFor(res: Response, ms: number): Promise<string> {
  const reader = res.body!.getReader();
  const decoder = new TextDecoder();
  let text = "";
  const stop = setTimeout(() => void reader.cancel(), ms);
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      text += decoder.decode(value, { stream: true });
    }
  } finally {
    clearTimeout(stop);
  }
  return text;
}

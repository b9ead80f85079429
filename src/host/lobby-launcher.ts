// The leader of one sandbox's process group (process driver). The host spawns this file detached,
// wrapped by isolation.ts (bubblewrap, or setpriv alone in unsafe-shared-user mode), so it runs in
// the sandbox's namespaces; everything it starts stays in its group and namespaces, and the host
// stops the sandbox by signalling the whole group.
//
// Input: one JSON line on stdin (LauncherSpec, the agent's token included), so no secret is in this
// process's environment or command line, where the sandbox's own app could read it. In a container
// (docker driver), the file REVDIAL_LAUNCH_FILE names instead, removed once read.
//
// It starts a private X display (Xvfb picks a free display number and reports it through
// -displayfd; no TCP, no abstract socket, the MIT-MAGIC-COOKIE-1 the host wrote into the sandbox's
// 0700 work dir), then `revdial agent --desktop` on that display registered as `sandbox-{session}`
// with the desktop service on a Unix socket in the work dir's 0700 run/, then the optional app.
// Each gets an explicit environment: PATH, HOME, LANG, DISPLAY, XAUTHORITY and the session's env;
// the agent alone also gets REVDIAL_TOKEN (and the host's transport and TLS settings). In users
// mode this launcher is uid 0 with only the capabilities to drop its children to their uids: Xvfb
// and the agent run as the sandbox's uid, the app as another, with its own home and cookie copy.
// It prints one JSON line on stdout when all are started: {"display", "desktop_socket", "pids"}.
// When Xvfb or the agent ends on its own, or the host dies (its parent changes), it stops the rest
// and exits 1.

import { type ChildProcess, type StdioOptions, spawn } from "node:child_process";
import { readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { dropTo, which } from "./isolation.ts";

export interface LauncherSpec {
  sessionId: string;
  serverUrl: string;
  /** Absolute path of src/cli/main.ts. */
  mainPath: string;
  app: string | null;
  /** The agent program bridged to the session's sync socket (`revdial agent --agent-command`). */
  agentCommand?: string | null;
  /** The session's environment (from the API's lobby request). */
  env: Record<string, string>;
  /** WIDTHxHEIGHTxDEPTH for Xvfb. */
  screen: string;
  /** The sandbox's work dir as seen inside it (HOME). */
  workDir: string;
  /** The scoped `rds-` key: the agent's only. */
  token: string;
  /** More environment for the agent only (transport, TLS). */
  agentEnv: Record<string, string>;
  lang: string;
  /** The app's HOME as seen inside (its own dir in users mode, else workDir). */
  appHome: string;
  /** users mode: the uids Xvfb and the agent, and the app, are started as (this launcher is uid 0). */
  drop: { agent: number; app: number } | null;
}

/** How long Xvfb may take to report its display. */
const XVFB_START_TIMEOUT_MS = 10_000;
/** How often the launcher checks that the host that started it is still its parent. */
const PARENT_WATCH_MS = 500;
const SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin";
/** Starts Xvfb through `start` (which adds the uid drop) and reads its display from fd 3. */
function startXvfb(
  start: (argv: string[]) => ChildProcess,
  screen: string,
  authFile: string,
): Promise<{ child: ChildProcess; display: string }> {
  const args = ["-displayfd", "3", "-screen", "0", screen, "-nolisten", "tcp", "-nolisten", "local"];
  const child = start(["Xvfb", ...args, "-auth", authFile, "-noreset"]);
  return new Promise((resolve, reject) => {
    let text = "";
    let stderr = "";
    const timer = setTimeout(
      () => reject(new Error(`Xvfb gave no display in ${XVFB_START_TIMEOUT_MS} ms`)),
      XVFB_START_TIMEOUT_MS,
    );
    child.stderr?.on("data", (chunk: Buffer) => {
      stderr = (stderr + chunk.toString()).slice(-2000);
    });
    child.once("error", reject);
    child.once("exit", (code) => reject(new Error(`Xvfb exited with ${code}: ${stderr.trim()}`)));
    child.stdio[3]?.on("data", (chunk: Buffer) => {
      text += chunk.toString();
      if (!text.includes("\n")) return;
      clearTimeout(timer);
      child.removeAllListeners("exit");
      resolve({ child, display: `:${text.trim()}` });
    });
  });
}

/** What every process of the sandbox gets, built from nothing: never the host's environment. */
function baseEnv(spec: LauncherSpec): Record<string, string> {
  return { PATH: SANDBOX_PATH, LANG: spec.lang, ...spec.env, HOME: spec.workDir, USER: "sandbox" };
}

async function launch(spec: LauncherSpec): Promise<void> {
  const children: ChildProcess[] = [];
  let stopping = false;
  const stopAll = (code: number) => {
    if (stopping) return;
    stopping = true;
    for (const child of children)
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
    Promise.all(
      children.map((c) =>
        c.exitCode === null && c.signalCode === null ? new Promise((r) => c.once("exit", r)) : null,
      ),
    ).then(() => process.exit(code));
  };
  process.once("SIGTERM", () => stopAll(0));
  process.once("SIGINT", () => stopAll(0));
  // Where no parent-death signal reaches this process (no setpriv), its parent changing is the sign.
  const parent = process.ppid;
  setInterval(() => {
    if (process.ppid !== parent) {
      process.stderr.write("the host is gone; stopping the sandbox\n");
      process.kill(0, "SIGKILL");
    }
  }, PARENT_WATCH_MS);
  const essential = (child: ChildProcess, name: string) => {
    children.push(child);
    child.once("exit", (code, signal) => {
      if (stopping) return;
      process.stderr.write(`${name} exited (code ${code}, signal ${signal}); stopping the sandbox\n`);
      stopAll(1);
    });
  };
  // Children get a parent-death signal too, so none outlives this launcher; in users mode each is
  // also dropped to its uid for good.
  const setpriv = which("setpriv", SANDBOX_PATH);
  const start = (who: "agent" | "app", argv: string[], env: Record<string, string>, stdio: StdioOptions) => {
    const prefix =
      spec.drop && setpriv
        ? dropTo(setpriv, spec.drop[who])
        : setpriv
          ? [setpriv, "--pdeathsig=KILL", "--"]
          : [];
    const full = [...prefix, ...argv];
    return spawn(full[0], full.slice(1), { env, cwd: "/", stdio });
  };
  if (spec.drop && !setpriv) throw new Error("setpriv is not installed: cannot drop to the sandbox's uid");

  const authFile = join(spec.workDir, ".Xauthority");
  const runDir = join(spec.workDir, "run");
  const env = baseEnv(spec);
  const xvfb = which("Xvfb", SANDBOX_PATH)
    ? await startXvfb(
        (argv) => start("agent", argv, env, ["ignore", "ignore", "pipe", "pipe"]),
        spec.screen,
        authFile,
      )
    : null;
  if (xvfb) essential(xvfb.child, "Xvfb");
  else process.stderr.write("Xvfb not installed: the sandbox has no display\n");
  const display = xvfb?.display ?? null;
  if (display) Object.assign(env, { DISPLAY: display, XAUTHORITY: authFile });

  const socket = join(runDir, "desktop.sock");
  const agentArgs = [
    spec.mainPath,
    "agent",
    "--server",
    spec.serverUrl,
    "--runner-id",
    `sandbox-${spec.sessionId}`,
  ];
  agentArgs.push("--desktop", "--desktop-listen", `unix://${socket}`);
  if (display) agentArgs.push("--display", display);
  if (spec.agentCommand) agentArgs.push("--agent-command", spec.agentCommand);
  const agentEnv = { ...env, ...spec.agentEnv, REVDIAL_TOKEN: spec.token };
  const agent = start("agent", [process.execPath, ...agentArgs], agentEnv, ["ignore", "ignore", "inherit"]);
  essential(agent, "agent");

  let app: ChildProcess | null = null;
  if (spec.app) {
    const appEnv: Record<string, string> = { ...env, HOME: spec.appHome };
    if (display) appEnv.XAUTHORITY = join(spec.appHome, ".Xauthority");
    app = start("app", ["/bin/sh", "-c", `cd "$HOME" && ${spec.app}`], appEnv, [
      "ignore",
      "ignore",
      "inherit",
    ]);
    app.on("error", () => {});
    children.push(app);
  }
  const pids = {
    launcher: process.pid,
    xvfb: xvfb?.child.pid ?? null,
    agent: agent.pid ?? null,
    app: app?.pid ?? null,
  };
  process.stdout.write(`${JSON.stringify({ display, desktop_socket: socket, pids })}\n`);
}

async function readSpec(): Promise<LauncherSpec> {
  // In a container (docker driver), the spec is a file of the launch dir: read, then removed.
  const file = process.env.REVDIAL_LAUNCH_FILE;
  if (file) {
    const text = readFileSync(file, "utf8");
    rmSync(file, { force: true });
    return JSON.parse(text) as LauncherSpec;
  }
  const lines = createInterface({ input: process.stdin });
  for await (const line of lines) {
    lines.close();
    return JSON.parse(line) as LauncherSpec;
  }
  throw new Error("no launch spec on stdin");
}

if (import.meta.main) {
  readSpec()
    .then(launch)
    .catch((err: Error) => {
      process.stderr.write(`sandbox launch failed: ${err.message}\n`);
      // Take down whatever was started (the whole group), but not by the graceful handler: exit 1.
      process.removeAllListeners("SIGTERM");
      process.on("SIGTERM", () => {});
      process.kill(0, "SIGTERM");
      process.exit(1);
    });
}

// The leader of one sandbox's process group (process driver). The host spawns this file detached,
// so its pid is the group id; everything it starts stays in that group, and the host stops the
// sandbox by signalling the whole group: nothing survives it.
//
// It starts a private X display (Xvfb picks a free display number and reports it through
// -displayfd), then `revdial agent --desktop` on that display registered as `sandbox-{session}`
// with the scoped token (from REVDIAL_TOKEN, never on a command line), then the optional app. It
// prints one JSON line on stdout when all are started: {"display", "desktop_port", "pids"}.
// When Xvfb or the agent ends on its own, it stops the rest and exits 1, so the host sees the
// sandbox die. Input: REVDIAL_LOBBY_SPEC (JSON, see LauncherSpec) and REVDIAL_TOKEN.

import { type ChildProcess, spawn } from "node:child_process";
import { accessSync, constants } from "node:fs";
import { createServer } from "node:net";
import { delimiter, join } from "node:path";

export interface LauncherSpec {
  sessionId: string;
  serverUrl: string;
  /** Absolute path of src/cli/main.ts. */
  mainPath: string;
  app: string | null;
  /** The agent program bridged to the session's sync socket (`revdial agent --agent-command`). */
  agentCommand?: string | null;
  env: Record<string, string>;
  /** WIDTHxHEIGHTxDEPTH for Xvfb. */
  screen: string;
}

/** How long Xvfb may take to report its display. */
const XVFB_START_TIMEOUT_MS = 10_000;

function onPath(command: string): boolean {
  return (process.env.PATH ?? "").split(delimiter).some((dir) => {
    try {
      accessSync(join(dir, command), constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

function startXvfb(screen: string): Promise<{ child: ChildProcess; display: string }> {
  const child = spawn("Xvfb", ["-displayfd", "3", "-screen", "0", screen, "-nolisten", "tcp", "-noreset"], {
    stdio: ["ignore", "ignore", "pipe", "pipe"],
  });
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
  const essential = (child: ChildProcess, name: string) => {
    children.push(child);
    child.once("exit", (code, signal) => {
      if (stopping) return;
      process.stderr.write(`${name} exited (code ${code}, signal ${signal}); stopping the sandbox\n`);
      stopAll(1);
    });
  };

  const xvfb = onPath("Xvfb") ? await startXvfb(spec.screen) : null;
  if (xvfb) essential(xvfb.child, "Xvfb");
  else process.stderr.write("Xvfb not installed: the sandbox has no private display\n");
  const display = xvfb?.display ?? process.env.DISPLAY ?? null;
  const env: NodeJS.ProcessEnv = { ...process.env, ...spec.env };
  delete env.REVDIAL_LOBBY_SPEC;
  delete env.WAYLAND_DISPLAY;
  if (display) env.DISPLAY = display;

  const port = await freePort();
  const agentArgs = [
    spec.mainPath,
    "agent",
    "--server",
    spec.serverUrl,
    "--runner-id",
    `sandbox-${spec.sessionId}`,
  ];
  agentArgs.push("--desktop", "--desktop-listen", `127.0.0.1:${port}`);
  if (display) agentArgs.push("--display", display);
  if (spec.agentCommand) agentArgs.push("--agent-command", spec.agentCommand);
  const agent = spawn(process.execPath, agentArgs, { env, stdio: ["ignore", "ignore", "inherit"] });
  essential(agent, "agent");

  let app: ChildProcess | null = null;
  if (spec.app) {
    app = spawn("/bin/sh", ["-c", spec.app], { env, stdio: ["ignore", "ignore", "inherit"] });
    app.on("error", () => {});
    children.push(app);
  }
  const pids = {
    launcher: process.pid,
    xvfb: xvfb?.child.pid ?? null,
    agent: agent.pid ?? null,
    app: app?.pid ?? null,
  };
  process.stdout.write(`${JSON.stringify({ display, desktop_port: port, pids })}\n`);
}

if (import.meta.main) {
  const spec = JSON.parse(process.env.REVDIAL_LOBBY_SPEC ?? "null") as LauncherSpec | null;
  if (!spec) {
    process.stderr.write("REVDIAL_LOBBY_SPEC is required\n");
    process.exit(2);
  }
  launch(spec).catch((err: Error) => {
    process.stderr.write(`sandbox launch failed: ${err.message}\n`);
    // Take down whatever was started (the whole group), but not by the graceful handler: exit 1.
    process.removeAllListeners("SIGTERM");
    process.on("SIGTERM", () => {});
    process.kill(0, "SIGTERM");
    process.exit(1);
  });
}

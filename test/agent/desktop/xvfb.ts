// Test helper: a real Xvfb on a free display number (Xvfb picks it and reports it through -displayfd),
// client windows of a known colour on it (xlogo with the same -bg and -fg), and teardown that kills
// every process it started. Tests call hasCommand() first and skip with a message when a tool is
// missing; .ci/run installs them (xvfb, x11-apps, xclip).

import { type ChildProcess, spawn } from "node:child_process";
import { accessSync, constants } from "node:fs";
import { delimiter, join } from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import x11, { type X11Client } from "x11";

export interface Xvfb {
  /** ":N" */
  readonly display: string;
  readonly width: number;
  readonly height: number;
  /** process.env with DISPLAY set to this server and no WAYLAND_DISPLAY. */
  readonly env: NodeJS.ProcessEnv;
  /** Opens a full-colour xlogo window at x,y of w x h, and waits until its colour is on screen. */
  window(color: Rgb, geometry: { x: number; y: number; width: number; height: number }): Promise<void>;
  /** Starts any X client on this display; it is killed by close(). */
  client(command: string, args: string[]): ChildProcess;
  /** Kills the clients, then Xvfb, and waits for them to exit. Idempotent. */
  close(): Promise<void>;
}

export type Rgb = readonly [number, number, number];

const START_TIMEOUT_MS = 10_000;
const WINDOW_TIMEOUT_MS = 10_000;

/** True when `command` is an executable on PATH. */
export function hasCommand(command: string): boolean {
  for (const dir of (process.env.PATH ?? "").split(delimiter)) {
    try {
      accessSync(join(dir, command), constants.X_OK);
      return true;
    } catch {}
  }
  return false;
}

/** The reason to skip, or false when every tool is installed. */
export function missingTools(...commands: string[]): string | false {
  const missing = commands.filter((command) => !hasCommand(command));
  return missing.length > 0
    ? `SKIPPED: not installed: ${missing.join(", ")} (apt-get install xvfb x11-apps xclip)`
    : false;
}

export interface XvfbOptions {
  width?: number;
  height?: number;
  /** A display number to take (to restart a server on the same display); default a free one. */
  displayNumber?: number;
}

export async function startXvfb(options: XvfbOptions = {}): Promise<Xvfb> {
  const { width = 1920, height = 1080, displayNumber } = options;
  const fixed = displayNumber === undefined ? [] : [`:${displayNumber}`];
  const args = [
    ...fixed,
    "-displayfd",
    "3",
    "-screen",
    "0",
    `${width}x${height}x24`,
    "-nolisten",
    "tcp",
    "-noreset",
  ];
  const server = spawn("Xvfb", args, {
    stdio: ["ignore", "ignore", "pipe", "pipe"],
  });
  const display = `:${await readDisplayNumber(server)}`;
  const env: NodeJS.ProcessEnv = { ...process.env, DISPLAY: display };
  delete env.WAYLAND_DISPLAY;
  const clients = new Set<ChildProcess>();
  let closing: Promise<void> | undefined;
  const xvfb: Xvfb = {
    display,
    width,
    height,
    env,
    client(command, args) {
      const child = spawn(command, args, { env, stdio: "ignore" });
      child.on("error", () => {});
      clients.add(child);
      child.on("exit", () => clients.delete(child));
      return child;
    },
    async window(color, { x, y, width: w, height: h }) {
      const name = `#${color.map((c) => c.toString(16).padStart(2, "0")).join("")}`;
      xvfb.client("xlogo", ["-geometry", `${w}x${h}+${x}+${y}`, "-bg", name, "-fg", name]);
      await waitForPixel(display, x + Math.floor(w / 2), y + Math.floor(h / 2), color);
    },
    close() {
      closing ??= (async () => {
        await Promise.all([...clients].map(kill));
        await kill(server);
      })();
      return closing;
    },
  };
  return xvfb;
}

function readDisplayNumber(server: ChildProcess): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = "";
    let stderr = "";
    const timer = setTimeout(
      () => fail(new Error(`Xvfb did not start in ${START_TIMEOUT_MS} ms: ${stderr}`)),
      START_TIMEOUT_MS,
    );
    const fail = (err: Error) => {
      clearTimeout(timer);
      server.kill("SIGKILL");
      reject(err);
    };
    server.stderr?.on("data", (chunk: Buffer) => {
      stderr = (stderr + chunk.toString()).slice(-2000);
    });
    server.on("error", fail);
    server.on("exit", (code) => fail(new Error(`Xvfb exited with ${code}: ${stderr}`)));
    server.stdio[3]?.on("data", (chunk: Buffer) => {
      text += chunk.toString();
      if (!text.includes("\n")) return;
      clearTimeout(timer);
      server.removeAllListeners("exit");
      resolve(text.trim());
    });
  });
}

function kill(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    child.once("exit", () => resolve());
    child.kill("SIGTERM");
  });
}

/** Polls one screen pixel (own X connection) until it has `color`, with backoff, up to a deadline. */
async function waitForPixel(display: string, x: number, y: number, color: Rgb): Promise<void> {
  const deadline = Date.now() + WINDOW_TIMEOUT_MS;
  const conn = await connect(display);
  try {
    for (let wait = 5; ; wait = Math.min(wait * 2, 200)) {
      const pixel = await readPixel(conn.client, conn.root, x, y);
      if (pixel.every((value, i) => value === color[i])) return;
      if (Date.now() > deadline)
        throw new Error(`pixel ${x},${y} is ${pixel}, not ${color}, after ${WINDOW_TIMEOUT_MS} ms`);
      await delay(wait);
    }
  } finally {
    conn.client.stream.destroy();
  }
}

function connect(display: string): Promise<{ client: X11Client; root: number }> {
  return new Promise((resolve, reject) => {
    const client = x11.createClient({ display, shm: false }, (err, xDisplay) => {
      if (err) reject(err);
      else resolve({ client, root: xDisplay.screen[0].root });
    });
    client.on("error", () => {});
  });
}

function readPixel(client: X11Client, root: number, x: number, y: number): Promise<Rgb> {
  return new Promise((resolve, reject) => {
    client.GetImage(2, root, x, y, 1, 1, 0xffffffff, (err, image) => {
      if (err) reject(err);
      else resolve([image.data[2], image.data[1], image.data[0]]);
      return true;
    });
  });
}

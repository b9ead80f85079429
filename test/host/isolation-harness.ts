// Helpers for the isolation and orphan tests: the machine's processes as root sees them (by uid, by
// command line), the attacker app (fixtures/attack-app.mjs) started as a sandbox's --app, and the
// assertions on what it reports. Tests skip with these reasons where the machine cannot run them.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import {
  copyFileSync,
  existsSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  renameSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { procInfo } from "../../src/host/host-state.ts";
import { which } from "../../src/host/isolation.ts";

export const ATTACK_APP = fileURLToPath(new URL("./fixtures/attack-app.mjs", import.meta.url));

/** The --app that waits for the test's targets, then attacks (the test writes them after start). */
export const ATTACK_COMMAND = `while [ ! -f "$HOME/targets.json" ]; do sleep 0.1; done; exec ${process.execPath} "$HOME/attack-app.mjs"`;

/** Why a root-only test cannot run here, or false. */
export function needsRoot(): string | false {
  if (process.getuid?.() !== 0)
    return "SKIPPED: needs root (users isolation runs each sandbox as a uid of its own)";
  for (const tool of ["bwrap", "setpriv", "Xvfb"])
    if (!which(tool)) return `SKIPPED: ${tool} is not installed (apt-get install bubblewrap util-linux xvfb)`;
  try {
    // A container without CAP_SYS_ADMIN, or whose seccomp profile forbids unshare, cannot make namespaces.
    execFileSync(
      "bwrap",
      ["--ro-bind", "/", "/", "--proc", "/proc", "--unshare-pid", "--unshare-ipc", "true"],
      {
        stdio: "ignore",
      },
    );
  } catch {
    return "SKIPPED: bwrap cannot create namespaces here (a container without CAP_SYS_ADMIN?)";
  }
  return false;
}

/** Why unprivileged user namespaces cannot be tested here, or false. */
export function needsUserns(): string | false {
  const root = needsRoot();
  if (root) return root;
  try {
    execFileSync(
      "setpriv",
      [
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "bwrap",
        "--unshare-user",
        "--ro-bind",
        "/",
        "/",
        "true",
      ],
      {
        stdio: "ignore",
      },
    );
    return false;
  } catch {
    return "SKIPPED: unprivileged user namespaces are disabled here (namespaces isolation)";
  }
}

/** Pids whose command line contains every needle (as root sees them). */
export function pidsWithCommand(...needles: string[]): number[] {
  const out: number[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cmd = readFileSync(`/proc/${entry}/cmdline`, "utf8").replaceAll("\0", " ");
      if (needles.every((n) => cmd.includes(n))) out.push(Number(entry));
    } catch {}
  }
  return out;
}

/** Pids running as a uid in [first, last]. */
export function pidsOfUids(first: number, last: number): number[] {
  const out: number[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    const info = procInfo(Number(entry));
    if (info && info.uid >= first && info.uid <= last) out.push(info.pid);
  }
  return out;
}

/** The socket inodes process `pid` holds. */
export function socketInodesOf(pid: number): Set<string> {
  const out = new Set<string>();
  try {
    for (const fd of readdirSync(`/proc/${pid}/fd`)) {
      try {
        const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
        if (m) out.add(m[1]);
      } catch {}
    }
  } catch {}
  return out;
}

/**
 * The machine's X listeners for displays 0-9 that a sandbox could reach, as attempt names of the
 * attacker ("xAbstractN", "xTcpN") to their socket inodes: abstract Unix sockets and TCP ports are
 * per network namespace, which sandboxes share with the machine.
 */
export function xListeners(): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of readFileSync("/proc/net/unix", "utf8").split("\n").slice(1)) {
    const f = line.trim().split(/\s+/);
    const m = /^@\/tmp\/\.X11-unix\/X(\d)$/.exec(f[7] ?? "");
    if (m) out.set(`xAbstract${m[1]}`, f[6]);
  }
  for (const table of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    let text = "";
    try {
      text = readFileSync(table, "utf8");
    } catch {
      continue;
    }
    for (const line of text.split("\n").slice(1)) {
      const f = line.trim().split(/\s+/);
      const port = Number.parseInt((f[1] ?? ":").split(":")[1], 16);
      if (f[3] === "0A" && port >= 6000 && port <= 6009) out.set(`xTcp${port - 6000}`, f[9]);
    }
  }
  return out;
}

/** Every pid descended from `roots` (by parent pid), the roots included. */
export function descendantsOf(roots: number[]): number[] {
  const parent = new Map<number, number>();
  for (const e of readdirSync("/proc")) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const stat = readFileSync(`/proc/${e}/stat`, "utf8");
      parent.set(Number(e), Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]));
    } catch {}
  }
  const found = new Set(roots);
  for (let grew = true; grew; ) {
    grew = false;
    for (const [pid, ppid] of parent)
      if (found.has(ppid) && !found.has(pid)) {
        found.add(pid);
        grew = true;
      }
  }
  return [...found];
}

/** Pids in process group `pgid`. */
export function pidsOfGroup(pgid: number): number[] {
  return readdirSync("/proc")
    .filter((e) => /^\d+$/.test(e))
    .map((e) => procInfo(Number(e)))
    .filter((p) => p !== null && p.pgrp === pgid)
    .map((p) => (p as { pid: number }).pid);
}

/** Polls until `check` holds or throws after `timeoutMs` (no fixed sleep: backoff to 250 ms). */
export async function until(check: () => boolean | Promise<boolean>, what: string, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs;
  for (let wait = 10; !(await check()); wait = Math.min(wait * 2, 250)) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await delay(wait);
  }
}

export interface AttackTargets {
  /** Its own session's key (its agent has it). */
  ownToken: string;
  /** Its own agent's desktop socket, as the sandbox sees it. */
  ownDesktopSocket: string;
  otherToken: string;
  runnerToken: string;
  hostMarker: string;
  otherAgentPid: number;
  dataDir: string;
  stateDir: string;
  otherWorkDir: string;
  lobbySocket: string;
}

type Results = Record<string, { ok: boolean; found?: unknown; error?: string }>;

/** No process in `pids` listens on an X TCP port or abstract socket; returns the foreign listeners. */
export function assertNoXListener(pids: number[], seen: Map<string, string>[]): Set<string> {
  const ours = new Set(pids.flatMap((pid) => [...socketInodesOf(pid)]));
  const foreign = new Set<string>();
  for (const listeners of seen)
    for (const [name, inode] of listeners) {
      assert.ok(!ours.has(inode), `a sandbox process listens on ${name}`);
      foreign.add(name);
    }
  return foreign;
}

/** Hands the attacker in `workDir` its targets and waits for its report. */
export async function runAttack(workDir: string, targets: AttackTargets): Promise<Results> {
  copyFileSync(ATTACK_APP, join(workDir, "attack-app.mjs"));
  writeFileSync(join(workDir, "targets.tmp"), JSON.stringify(targets));
  renameSync(join(workDir, "targets.tmp"), join(workDir, "targets.json"));
  const file = join(workDir, "results.json");
  await until(() => existsSync(file), "the attacker's results", 60_000);
  return JSON.parse(readFileSync(file, "utf8")) as Results;
}

/**
 * Every attempt of the attacker was refused; its own display worked with its cookie only. With
 * `appApart` (users mode: the app has a uid of its own) it could neither find its own session's key
 * nor reach its own agent's desktop socket; without, both are its tenant's own and it reaches them.
 */
export function assertRefused(r: Results, appApart: boolean, foreign: Set<string> = new Set()): void {
  const refused = (name: string) =>
    assert.equal(r[name]?.ok, false, `${name} must be refused: ${JSON.stringify(r[name])}`);
  assert.deepEqual(r.ownEnv.found, [], "the app's environment holds no secret and no token");
  const keys = r.ownEnvKeys.found as string[];
  for (const key of ["HOME", "PATH", "DISPLAY", "XAUTHORITY"])
    assert.ok(keys.includes(key), `the app has ${key}`);
  // Exactly the explicit environment (isolation.ts) plus the session's (the API sends
  // REVDIAL_SESSION_ID, and its task's and project's ids and names: scheduler.ts sandboxEnv).
  const session = [
    "REVDIAL_SESSION_ID",
    "REVDIAL_TASK_ID",
    "REVDIAL_TASK_NAME",
    "REVDIAL_PROJECT_ID",
    "REVDIAL_PROJECT_NAME",
  ];
  const explicit = ["DISPLAY", "HOME", "LANG", "PATH", ...session, "USER", "XAUTHORITY"];
  assert.deepEqual(
    keys.filter((k) => !explicit.includes(k) && !["PWD", "OLDPWD", "SHLVL", "_"].includes(k)),
    [],
    "no host variable reaches the app",
  );
  refused("otherAgentEnviron");
  assert.ok(
    !r.secretsInAnyEnviron.ok || (r.secretsInAnyEnviron.found as string[]).length === 0,
    JSON.stringify(r.secretsInAnyEnviron),
  );
  refused("signalOtherAgent");
  for (const name of [
    "dataDirList",
    "dataDirSecret",
    "hostState",
    "otherWorkDir",
    "otherCookie",
    "lobbyApi",
    "otherDesktop",
  ])
    refused(name);
  // X servers outside the sandboxes (another program's Xvfb) may listen there; the test checks from
  // root that none of those listeners is a sandbox's (assertNoXListener).
  for (let n = 0; n < 10; n++)
    for (const name of [`xTcp${n}`, `xAbstract${n}`]) if (!foreign.has(name)) refused(name);
  refused("ownXWithOtherCookiePath");
  if (appApart) {
    assert.deepEqual(r.ownKeyInAnyEnviron.found, [], "the app cannot read its own agent's key");
    refused("ownDesktop");
  } else {
    // Positive controls: the method works where access is allowed, so the refusals above mean something.
    assert.ok((r.ownKeyInAnyEnviron.found as string[]).length > 0, "same uid: the app reads its agent's key");
    assert.equal(r.ownDesktop.found, "connected", "its own desktop socket answers");
  }
  assert.equal(r.ownXWithCookie.found, "accepted", "its own display accepts its cookie");
  assert.equal(r.ownXNoCookie.found, "refused", "its own display refuses a client without the cookie");
}

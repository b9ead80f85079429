// How the process driver keeps sandboxes apart from each other and from the host, and the command
// that wraps each sandbox's launcher. Sandboxes run untrusted code (an AI agent executes whatever it
// decides to), so the host picks the strongest mode the machine allows and refuses the unsafe one
// unless the operator asks for it by name:
//
//   users       (host runs as root) bubblewrap gives the sandbox its own PID, IPC, mount (and, where
//               allowed, cgroup) namespaces; inside, util-linux `setpriv` starts Xvfb and the agent as
//               an unprivileged uid of its own and the app as a second one (a host's window of
//               --sandbox-uids starting at F: slot i runs as F + i, its app as F + max + i; no
//               capabilities, no new privileges), so the app cannot read the agent's key. The
//               filesystem is a tmpfs root with the system dirs, /etc and the project's code
//               read-only, a private /tmp, the agent's 0700 work dir and the app's 0700 home: the
//               host's state, the server's data dir and other sandboxes' dirs are not mounted at all.
//   namespaces  (not root, unprivileged user namespaces work) the same through a user namespace, but
//               with one uid: the sandbox keeps the host's uid outside, so the mount and PID
//               namespaces are what hide the host's files and processes from it, and the app, as the
//               agent's uid, can read the agent's environment (its own session's key).
//   unsafe-shared-user  nothing of the above: sandboxes run as the host's user and can read each
//               other's files and processes. Only on an explicit request; logged at every start.
//
// No mode has a network namespace: the agent dials the API over the host's network (loopback
// included), so a sandbox reaches whatever TCP service the machine exposes to its users.
// Every mode wraps the launcher so it dies with the host: bwrap --die-with-parent (and the PID
// namespace's init: when it dies the kernel kills everything in the namespace), setpriv --pdeathsig.

import { execFile } from "node:child_process";
import { accessSync, constants, lstatSync, readlinkSync, realpathSync, statSync } from "node:fs";
import { basename, delimiter, dirname, join } from "node:path";
import { InvalidOptionError } from "../common/errors.ts";
import { HOST_ERROR_CODES, HostError } from "./host-errors.ts";

export type IsolationMode = "users" | "namespaces" | "unsafe-shared-user";
export const ISOLATION_CHOICES = Object.freeze([
  "auto",
  "users",
  "namespaces",
  "unsafe-shared-user",
] as const);
export type IsolationRequest = (typeof ISOLATION_CHOICES)[number];

/** An inclusive range of uids, one per sandbox slot. */
export interface UidRange {
  first: number;
  last: number;
}

export const ISOLATION_DEFAULTS = Object.freeze({
  /** 1000 uids far above any distribution's regular and system users. */
  sandboxUids: Object.freeze({ first: 200_000, last: 200_999 }) as UidRange,
  /** How long probing bwrap may take. */
  probeTimeoutMs: 5_000,
});

/** The isolation a host runs with, as chosen by chooseIsolation(). */
export interface Isolation {
  readonly mode: IsolationMode;
  /** The uids sandboxes run as (users mode only). */
  readonly uids: UidRange | null;
  readonly bwrap: string | null;
  readonly setpriv: string | null;
  /** Why a weaker mode was chosen, when it was (auto). */
  readonly reason: string | null;
}

/** The host cannot isolate sandboxes as asked. */
export class IsolationUnavailableError extends HostError {
  constructor(message: string) {
    super(HOST_ERROR_CODES.isolationUnavailable, 500, message);
  }
}

/** "200000-200999" to a range; throws naming --sandbox-uids. */
export function parseUidRange(text: string): UidRange {
  const match = /^(\d{1,10})-(\d{1,10})$/.exec(text);
  const first = Number(match?.[1]);
  const last = Number(match?.[2]);
  if (!match || first < 1000 || last < first || last > 4_294_967_293)
    throw new InvalidOptionError(
      "sandboxUids",
      `expected FIRST-LAST with 1000 <= FIRST <= LAST, got "${text}"`,
    );
  return { first, last };
}

export function describeIsolation(iso: Isolation): string {
  if (iso.mode !== "users" || !iso.uids) return iso.mode;
  return `users (uid ${iso.uids.first}-${iso.uids.last})`;
}

/** The absolute path of `command` on PATH, or null. */
export function which(command: string, path = process.env.PATH ?? ""): string | null {
  for (const dir of path.split(delimiter)) {
    if (!dir) continue;
    const candidate = join(dir, command);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {}
  }
  return null;
}

/** True when users other than the owner may read `path` (and enter it, or run it, where it is a dir or executable). */
function readableByOthers(path: string): boolean {
  try {
    const st = statSync(path);
    return (st.mode & 0o004) !== 0 && (!(st.isDirectory() || st.mode & 0o100) || (st.mode & 0o001) !== 0);
  } catch {
    return false;
  }
}

function probe(command: string, args: string[], timeoutMs: number): Promise<string | null> {
  return new Promise((resolve) => {
    execFile(command, args, { timeout: timeoutMs, env: { PATH: "/usr/bin:/bin" } }, (err, _out, stderr) =>
      resolve(err ? (stderr.trim() || err.message).slice(0, 300) : null),
    );
  });
}

const PROBE_ROOT = [
  "--ro-bind",
  "/",
  "/",
  "--proc",
  "/proc",
  "--dev",
  "/dev",
  "--unshare-pid",
  "--unshare-ipc",
];

/**
 * Picks the isolation: `requested` is a mode, or auto (users as root, else namespaces, else an
 * error; with `allowSharedFallback`, auto falls back to unsafe-shared-user instead). Probes bwrap
 * with a real sandbox, so a kernel or container that forbids namespaces is found here, not at the
 * first session. Throws IsolationUnavailableError naming --unsafe-shared-user.
 */
export async function chooseIsolation(options: {
  requested: IsolationRequest;
  uids?: UidRange;
  maxSandboxes: number;
  allowSharedFallback?: boolean;
  probeTimeoutMs?: number;
  /** Files and dirs the sandbox's uids must read (users mode): the code, node_modules, node. */
  codePaths?: string[];
}): Promise<Isolation> {
  const { requested } = options;
  if (!ISOLATION_CHOICES.includes(requested))
    throw new InvalidOptionError("isolation", `expected one of ${ISOLATION_CHOICES.join(", ")}`);
  const uids = options.uids ?? ISOLATION_DEFAULTS.sandboxUids;
  const timeoutMs = options.probeTimeoutMs ?? ISOLATION_DEFAULTS.probeTimeoutMs;
  const bwrap = which("bwrap");
  const setpriv = which("setpriv");
  if (requested === "unsafe-shared-user")
    return { mode: requested, uids: null, bwrap, setpriv, reason: null };

  const isRoot = process.getuid?.() === 0;
  const tryUsers = async (): Promise<string | null> => {
    if (!isRoot) return "the host does not run as root";
    if (!bwrap || !setpriv) return "bwrap (Debian: bubblewrap) and setpriv (util-linux) are needed";
    const hidden = (options.codePaths ?? []).find((p) => !readableByOthers(p));
    if (hidden) return `${hidden} is not readable by other users, so a sandbox's uid could not run the agent`;
    if (uids.last - uids.first + 1 < 2 * options.maxSandboxes)
      return `--sandbox-uids ${uids.first}-${uids.last} has fewer than 2 uids per sandbox (--max-sandboxes ${options.maxSandboxes})`;
    return probe(
      bwrap,
      [...PROBE_ROOT, "--", setpriv, `--reuid=${uids.first}`, "--clear-groups", "true"],
      timeoutMs,
    );
  };
  const tryNamespaces = async (): Promise<string | null> => {
    if (!bwrap) return "bwrap (Debian: bubblewrap) is not installed";
    return probe(bwrap, ["--unshare-user", ...PROBE_ROOT, "--", "true"], timeoutMs);
  };

  const reasons: string[] = [];
  if (requested === "users" || requested === "auto") {
    const why = await tryUsers();
    if (!why) return { mode: "users", uids, bwrap, setpriv, reason: null };
    reasons.push(`users: ${why}`);
  }
  if (requested === "namespaces" || requested === "auto") {
    const why = await tryNamespaces();
    if (!why) return { mode: "namespaces", uids: null, bwrap, setpriv, reason: reasons.join("; ") || null };
    reasons.push(`namespaces: ${why}`);
  }
  const reason = reasons.join("; ");
  if (requested === "auto" && options.allowSharedFallback)
    return { mode: "unsafe-shared-user", uids: null, bwrap, setpriv, reason };
  throw new IsolationUnavailableError(
    `cannot isolate sandboxes (${reason}); run as root with bubblewrap installed, enable unprivileged ` +
      "user namespaces, or accept sandboxes that can read each other and the host's files with --unsafe-shared-user",
  );
}

/** What one sandbox's wrapper needs to know. */
export interface SandboxPaths {
  /** The sandbox's work dir on the host (0700, owned by the sandbox's uid). */
  workDir: string;
  /** Where the work dir appears inside the sandbox (HOME). */
  innerWorkDir: string;
  /** The app's own home on the host (users mode: 0700, owned by the app's uid), or null. */
  appDir?: string | null;
  /** Directories the sandbox reads its code from, bound read-only at the same path. */
  readOnly: { source: string; dest: string }[];
}

/** Where a sandbox sees its work dir in the namespaced modes. */
export const INNER_WORK_DIR = "/home/sandbox";
/** Where the app sees its home in users mode. */
export const INNER_APP_DIR = "/home/app";

/** The system directories bound read-only, or recreated as the symlinks they are (merged /usr). */
const SYSTEM_DIRS = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt"];

function systemBinds(): string[] {
  const args: string[] = [];
  for (const dir of SYSTEM_DIRS) {
    try {
      const stat = lstatSync(dir);
      if (stat.isSymbolicLink()) args.push("--symlink", readlinkSync(dir), dir);
      else if (stat.isDirectory()) args.push("--ro-bind", dir, dir);
    } catch {}
  }
  return args;
}

/** Every ancestor of `paths` (not "/"), parents first, each once. */
function parentDirs(paths: string[]): string[] {
  const out = new Set<string>();
  for (const p of paths) {
    const chain: string[] = [];
    for (let d = dirname(p); d !== "/" && d !== "."; d = dirname(d)) chain.unshift(d);
    for (const d of chain) out.add(d);
  }
  return [...out];
}

/**
 * The argv (command first) that runs `inner` (the launcher) in the sandbox. The environment is the
 * caller's: bwrap and setpriv pass it through unchanged.
 *
 * In users mode the launcher itself stays uid 0 inside the sandbox's namespaces, with only the
 * capabilities it needs to start each process as its own uid (CAP_SETUID, CAP_SETGID, CAP_SETPCAP
 * for setpriv's bounding set, CAP_KILL to stop them): Xvfb and the agent as the sandbox's uid, the
 * app as a second uid, so the app cannot read the agent's environment (its key) or memory.
 */
export function wrapCommand(iso: Isolation, paths: SandboxPaths, inner: string[]): string[] {
  if (iso.mode === "unsafe-shared-user")
    return iso.setpriv ? [iso.setpriv, "--pdeathsig=KILL", "--", ...inner] : inner;
  const appBind = paths.appDir ? ["--bind", paths.appDir, INNER_APP_DIR] : [];
  const caps =
    iso.mode === "users"
      ? ["--cap-drop", "ALL"].concat(
          ...["CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP", "CAP_KILL"].map((c) => ["--cap-add", c]),
        )
      : [];
  return [
    iso.bwrap as string,
    ...(iso.mode === "namespaces" ? ["--unshare-user", "--disable-userns"] : []),
    ...caps,
    "--die-with-parent",
    "--unshare-pid",
    "--unshare-ipc",
    "--unshare-cgroup-try",
    ...systemBinds(),
    "--proc",
    "/proc",
    "--dev",
    "/dev",
    "--perms",
    "1777",
    "--tmpfs",
    "/tmp",
    // bwrap makes a bind's missing parents 0700, which the sandbox's uid could not cross.
    ...parentDirs([...paths.readOnly.map((b) => b.dest), paths.innerWorkDir, INNER_APP_DIR]).flatMap((d) => [
      "--perms",
      "0755",
      "--dir",
      d,
    ]),
    ...paths.readOnly.flatMap((b) => ["--ro-bind", b.source, b.dest]),
    "--bind",
    paths.workDir,
    paths.innerWorkDir,
    ...appBind,
    "--chdir",
    "/",
    "--",
    ...inner,
  ];
}

/** setpriv's argv prefix that drops to `uid` for good: no groups, capabilities or new privileges. */
export function dropTo(setpriv: string, uid: number): string[] {
  return [
    setpriv,
    `--reuid=${uid}`,
    `--regid=${uid}`,
    "--clear-groups",
    "--inh-caps=-all",
    "--bounding-set=-all",
    "--no-new-privs",
    "--pdeathsig=KILL",
    "--",
  ];
}

/**
 * Where the code's dependencies are: a checkout's own node_modules, or, for an installed package
 * (…/node_modules/revdial or …/node_modules/@scope/revdial), the node_modules that holds it, which
 * also holds what a global install nests in the package's own node_modules.
 */
export function modulesDirOf(projectRoot: string): string {
  const parent = dirname(projectRoot);
  if (basename(parent) === "node_modules") return parent;
  if (basename(dirname(parent)) === "node_modules" && basename(parent).startsWith("@"))
    return dirname(parent);
  return join(projectRoot, "node_modules");
}

/**
 * The code a sandbox runs, as read-only binds: the checkout's src/ (an installed package's dist/)
 * and package.json (not the whole checkout: a data dir or keys beside it stay out), node_modules at its real path mounted where the
 * checkout expects it, and the Node binary's installation when it lives outside the system dirs.
 */
export function codeBinds(
  projectRoot: string,
  codeDir = join(projectRoot, "src"),
  execPath = process.execPath,
): SandboxPaths["readOnly"] {
  const binds = [
    { source: codeDir, dest: codeDir },
    { source: join(projectRoot, "package.json"), dest: join(projectRoot, "package.json") },
  ];
  let modules: string | null = null;
  try {
    const wanted = modulesDirOf(projectRoot);
    modules = realpathSync(wanted);
    binds.push({ source: modules, dest: wanted });
    // Symlinks inside node_modules (.bin) may point at its real path.
    if (modules !== wanted) binds.push({ source: modules, dest: modules });
  } catch {}
  const node = realpathSync(execPath);
  const covered = (p: string) =>
    SYSTEM_DIRS.some((d) => p.startsWith(`${d}/`)) || (modules !== null && p.startsWith(`${modules}/`));
  if (!covered(node)) {
    const prefix = dirname(dirname(node));
    binds.push({ source: prefix, dest: prefix });
  }
  if (node !== execPath && !covered(execPath)) binds.push({ source: node, dest: execPath });
  return binds;
}

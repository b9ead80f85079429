// The desktop service's packages that are not plain JavaScript in the agent's own files: sharp
// (libvips, PNG/JPEG encoding) and x11 (the X protocol client). They load on first use, so an agent
// without --desktop never needs them: the one-file agent (dist/revdial-agent.mjs, the revdial-agent
// executable) carries the tunnel alone, and finds these in a node_modules beside it or above the
// working directory. A missing one is a clear error that names it and says how to get it.

import { createRequire } from "node:module";
import { join } from "node:path";
import { isSea } from "node:sea";
import type SharpModule from "sharp";
import type X11Module from "x11";

export type Sharp = typeof SharpModule;
export type X11 = typeof X11Module;

/** The versions the agent is built and tested with (package.json). */
const WANTED = { sharp: "0.35.5", x11: "4.2.2" } as const;

export class DesktopDependencyError extends Error {
  readonly code = "RD_ERR_DESKTOP_DEPENDENCY_MISSING";
  constructor(name: keyof typeof WANTED, purpose: string, cause: unknown) {
    super(
      `the desktop service needs the npm package ${name} (${purpose}), which cannot be loaded: ` +
        `${(cause as Error)?.message?.split("\n")[0] ?? String(cause)}. Install it beside the agent ` +
        `(npm install ${name}@${WANTED[name]}) or run the agent from the revdial package`,
      { cause },
    );
  }
}

const loaded = new Map<string, Promise<unknown>>();

async function load<T>(name: keyof typeof WANTED, purpose: string): Promise<T> {
  let pending = loaded.get(name) as Promise<T> | undefined;
  if (!pending) {
    pending = resolve<T>(name, purpose);
    loaded.set(name, pending);
    pending.catch(() => loaded.delete(name));
  }
  return pending;
}

async function resolve<T>(name: keyof typeof WANTED, purpose: string): Promise<T> {
  let first: unknown = new Error(
    `no ${name} in a node_modules beside the executable or above ${process.cwd()}`,
  );
  // A single executable application has no module resolution of its own (an import would resolve
  // from where it was built): it looks beside the executable, then from the working directory up.
  if (!isSea()) {
    try {
      const mod = (await import(name)) as { default?: T };
      return (mod.default ?? mod) as T;
    } catch (err) {
      first = err;
    }
  }
  const cwd = join(process.cwd(), "package.json");
  for (const base of isSea() ? [process.execPath, cwd] : [cwd]) {
    try {
      return createRequire(base)(name) as T;
    } catch {}
  }
  throw new DesktopDependencyError(name, purpose, first);
}

export function loadSharp(): Promise<Sharp> {
  return load<Sharp>("sharp", "PNG and JPEG encoding");
}

export function loadX11(): Promise<X11> {
  return load<X11>("x11", "the X display connection");
}

// The store as the API sees it, telling a change sink which sessions and hosts each write touched:
// the one place that knows every write of a session's status or a host's record, so no route has
// to remember to publish. Reads pass through untouched; writes are reported after they succeed, and
// writes inside a transaction only once it commits (a rolled-back write changed nothing).
//
// Repositories keep private fields, so every method is called on the real repository, never on the
// proxy.

import type { Repositories, Store } from "../../store/index.ts";

export interface ChangeSink {
  sessionChanged(id: string): void;
  hostChanged(id: string): void;
}

type Hook = (args: unknown[], result: unknown, sink: ChangeSink) => void;

const first = (args: unknown[]) => args[0] as string;

/** Session writes: the id is the first argument, or the created record's. */
const SESSION_HOOKS: Record<string, Hook> = {
  create: (_a, r, s) => s.sessionChanged((r as { id: string }).id),
  setStatus: (a, r, s) => r && s.sessionChanged(first(a)),
  setLobby: (a, r, s) => r && s.sessionChanged(first(a)),
  delete: (a, r, s) => r && s.sessionChanged(first(a)),
};

/** Host writes: the record itself, or (claimSlot) a session placed on a host, which changes its load. */
const HOST_HOOKS: Record<string, Hook> = {
  register: (_a, r, s) => r && s.hostChanged((r as { id: string }).id),
  create: (_a, r, s) => s.hostChanged((r as { id: string }).id),
  registerKnown: (_a, r, s) => r && s.hostChanged((r as { id: string }).id),
  heartbeat: (a, r, s) => r && s.hostChanged(first(a)),
  setStatus: (a, r, s) => r && s.hostChanged(first(a)),
  delete: (a, r, s) => r && s.hostChanged(first(a)),
  markStaleOffline: (_a, r, s) => {
    for (const id of r as string[]) s.hostChanged(id);
  },
  claimSlot: (a, r, s) => {
    if (!r) return;
    s.sessionChanged((a[0] as { sessionId: string }).sessionId);
    s.hostChanged((r as { host: { id: string } }).host.id);
  },
};

function observed<T extends object>(repo: T, hooks: Record<string, Hook>, sink: () => ChangeSink): T {
  return new Proxy(repo, {
    get(target, prop) {
      const value = Reflect.get(target, prop, target) as unknown;
      if (typeof value !== "function") return value;
      const method = value.bind(target) as (...args: unknown[]) => unknown;
      const hook = typeof prop === "string" ? hooks[prop] : undefined;
      if (!hook) return method;
      return async (...args: unknown[]) => {
        const result = await method(...args);
        hook(args, result, sink());
        return result;
      };
    },
  });
}

/** Records changes made inside a transaction; hands them on only when it commits. */
class PendingChanges implements ChangeSink {
  readonly #sessions = new Set<string>();
  readonly #hosts = new Set<string>();
  sessionChanged(id: string): void {
    this.#sessions.add(id);
  }
  hostChanged(id: string): void {
    this.#hosts.add(id);
  }
  flush(sink: ChangeSink): void {
    for (const id of this.#sessions) sink.sessionChanged(id);
    for (const id of this.#hosts) sink.hostChanged(id);
  }
}

function observedRepositories<T extends Repositories>(repos: T, sink: () => ChangeSink): T {
  const sessions = observed(repos.sessions, SESSION_HOOKS, sink);
  const wolfInstances = observed(repos.wolfInstances, HOST_HOOKS, sink);
  return new Proxy(repos, {
    get(target, prop) {
      if (prop === "sessions") return sessions;
      if (prop === "wolfInstances") return wolfInstances;
      const value = Reflect.get(target, prop, target) as unknown;
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
}

/** `store`, reporting each committed write of a session or host to `sink`. */
export function observeStore(store: Store, sink: ChangeSink): Store {
  const top = observedRepositories(store, () => sink);
  const transaction: Store["transaction"] = async (fn) => {
    const pending = new PendingChanges();
    const result = await store.transaction((tx) => fn(observedRepositories(tx, () => pending)));
    pending.flush(sink);
    return result;
  };
  return new Proxy(top, {
    get(target, prop) {
      if (prop === "transaction") return transaction;
      return Reflect.get(target, prop, target);
    },
  });
}

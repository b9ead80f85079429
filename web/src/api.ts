// The dashboard's client of the public REST API: the key it signed in with goes in the
// Authorization header of every call (never in a URL), and every failure becomes an ApiFailure with
// the API's code and a message a person can act on.
import type {
  SessionView as ApiSessionView,
  InteractionView,
  KeyView,
  MeView,
  ProjectView,
  SpecTaskView,
  UserView,
  WolfInstanceView,
} from "../../src/api/views.ts";

const KEY_STORAGE = "revdial.apiKey";

export function storedKey(): string | null {
  return sessionStorage.getItem(KEY_STORAGE);
}

export function storeKey(key: string | null): void {
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
}

export class ApiFailure extends Error {
  readonly status: number;
  readonly code: string;
  constructor(status: number, code: string, message: string) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** A message for a person: what failed, in the API's words, and what kind of failure it is. */
export function describeFailure(err: unknown): string {
  if (err instanceof ApiFailure) {
    if (err.status === 0) return `Cannot reach the API: ${err.message}`;
    if (err.status === 401) return `Not signed in: ${err.message}`;
    if (err.status === 403) return `Not allowed: ${err.message}`;
    if (err.status === 404) return `Not found: ${err.message}`;
    if (err.status >= 500) return `Server error (${err.status}): ${err.message}`;
    return `Request refused (${err.status}): ${err.message}`;
  }
  return err instanceof Error ? err.message : String(err);
}

export async function call(path: string, init: RequestInit = {}, key = storedKey()): Promise<Response> {
  const headers = new Headers(init.headers);
  if (key) headers.set("Authorization", `Bearer ${key}`);
  if (init.body !== undefined && !headers.has("content-type"))
    headers.set("content-type", "application/json");
  let res: Response;
  try {
    res = await fetch(path, { ...init, headers });
  } catch (err) {
    throw new ApiFailure(0, "RD_ERR_NETWORK", err instanceof Error ? err.message : String(err));
  }
  if (res.ok || res.status === 304) return res;
  let code = "RD_ERR_HTTP";
  let message = res.statusText || `HTTP ${res.status}`;
  try {
    const body = (await res.json()) as { error?: { code?: string; message?: string } };
    if (body.error?.code) code = body.error.code;
    if (body.error?.message) message = body.error.message;
  } catch {
    // not the API's error shape: keep the status text
  }
  throw new ApiFailure(res.status, code, message);
}

export async function getJson<T>(path: string): Promise<T> {
  return (await (await call(path)).json()) as T;
}

export async function sendJson<T>(method: string, path: string, body?: unknown): Promise<T> {
  const res = await call(path, { method, body: body === undefined ? undefined : JSON.stringify(body) });
  if (res.status === 204) return undefined as T;
  return (await res.json()) as T;
}

// The API's JSON shapes, shared with the server (src/api/views.ts): a field renamed there fails
// this type check. The dashboard adds only what its event feed carries besides them.
export type Me = MeView;
/** A session as the dashboard holds it: the API's view, or the event feed's word that it is gone. */
export type SessionView = ApiSessionView & { deleted?: boolean };
/** A sandbox host, likewise. */
export type HostView = WolfInstanceView & { deleted?: boolean };
export type TaskView = SpecTaskView;
export type { InteractionView, KeyView, ProjectView, UserView };

/** A tunnel of GET /api/v1/revdial/connections (the registry's stats, with the session it serves). */
export interface TunnelView {
  runner_id: string;
  transport?: string;
  protocol?: string;
  rtt_ms?: number | null;
  active_streams?: number;
  bytes_in?: number;
  bytes_out?: number;
  connected_at?: string;
  session_id?: string | null;
  owner?: string | null;
  [field: string]: unknown;
}

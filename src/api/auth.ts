// Who is calling, and what they may do. Every request and every tunnel registration names a key:
//   - user keys (`rd-` + 40 URL-safe chars), owned by a user, read or write; an admin user's keys
//     may do anything;
//   - session keys (`rds-` + 40), minted when a sandbox is started for a session: they reach only
//     that session (its endpoints and its `sandbox-{sessionID}` runner id);
//   - host keys (`rdh-` + 40), minted by an admin for one sandbox host (`revdial wolf create ID`):
//     they register that host's record and its `wolf-{id}` tunnel, and nothing else;
//   - the runner token, the seed's shared host secret (not in the store, compared in constant time),
//     only when the operator configures one: it may register `wolf-{id}` (record and tunnel) for
//     ids an admin has created, and nothing else. It never creates a host.
// Read-only keys never write, an admin's included: every write route and every tunnel registration
// calls requireWrite. Keys are stored as SHA-256 hashes only. A principal that may not see a
// session gets 404, never 403, so one tenant cannot learn which session ids another tenant has.
//
// Authentication runs in Fastify's onRequest hook, before the body is read: an unauthenticated
// request gets its 401 without the server reading (or buffering) what it sends, and its connection
// is closed when a body is still on the way (see authenticateBeforeBody). The admin proxy, which
// answers ahead of Fastify (routes/admin-proxy.ts), does the same through authenticateKnown(),
// which answers without a promise for a key whose lookup is remembered.

import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { mkdir, rename, writeFile } from "node:fs/promises";
import type { IncomingMessage } from "node:http";
import { join } from "node:path";
import type { FastifyInstance, FastifyReply, FastifyRequest, RouteOptions } from "fastify";
import { hasCode, InvalidOptionError } from "../common/errors.ts";
import type { Logger } from "../common/logger.ts";
import {
  isSessionId,
  type KeyAccess,
  type KeyScope,
  type Session,
  STORE_ERROR_CODES,
  type Store,
  type User,
} from "../store/index.ts";
import { ApiError } from "./http-errors.ts";

export type PrincipalScope = "admin" | "user" | "session" | "runner" | "host";

/** The authenticated caller of one request. */
export interface Principal {
  /** The key's id, or `runner-token` for the system secret. */
  keyId: string;
  /** The owning user; null for the runner token and host keys. */
  userId: string | null;
  admin: boolean;
  scope: PrincipalScope;
  /** The one session a session key reaches; null otherwise. */
  sessionId: string | null;
  /** The one host a host key speaks for; null otherwise. */
  hostId: string | null;
  access: KeyAccess;
}

/** What a principal may register a tunnel as (the answer of authorizeRunner). */
export interface RunnerGrant {
  runnerId: string;
  kind: "wolf" | "sandbox" | "other";
  /** For `sandbox-{sessionID}`: the session and its owner. */
  sessionId: string | null;
  ownerId: string | null;
}

declare module "fastify" {
  interface FastifyRequest {
    /** Set by Auth.preHandler; null before it runs. */
    principal: Principal | null;
  }
}

export const AUTH_ERROR_CODES = Object.freeze({
  required: "RD_ERR_AUTH_REQUIRED",
  forbidden: "RD_ERR_AUTH_FORBIDDEN",
  readOnly: "RD_ERR_AUTH_READ_ONLY",
  scope: "RD_ERR_AUTH_SCOPE",
  notOwned: "RD_ERR_AUTH_SESSION_NOT_OWNED",
  invalidRunnerId: "RD_ERR_AUTH_INVALID_RUNNER_ID",
  sessionNotFound: "RD_ERR_SESSION_NOT_FOUND",
  /** A host id no admin has created (the runner token, or a host's own registration). */
  hostNotCreated: "RD_ERR_WOLF_NOT_CREATED",
});

// ---- keys -------------------------------------------------------------------------------------

export const KEY_PREFIXES = Object.freeze({ user: "rd-", session: "rds-", host: "rdh-" });
/** 30 random bytes are exactly 40 base64url characters. */
const KEY_RANDOM_BYTES = 30;
const USER_KEY_PATTERN = /^rd-[A-Za-z0-9_-]{40}$/;
const SESSION_KEY_PATTERN = /^rds-[A-Za-z0-9_-]{40}$/;
const HOST_KEY_PATTERN = /^rdh-[A-Za-z0-9_-]{40}$/;
/** How much of a key is kept in clear for display (`rd-AbCd`). */
const DISPLAY_PREFIX_CHARS = 4;

/** True for the shape of a user, session or host key (one that may be in the store). */
function isKeyShaped(secret: string): boolean {
  return USER_KEY_PATTERN.test(secret) || SESSION_KEY_PATTERN.test(secret) || HOST_KEY_PATTERN.test(secret);
}

export function generateKey(kind: keyof typeof KEY_PREFIXES): string {
  return KEY_PREFIXES[kind] + randomBytes(KEY_RANDOM_BYTES).toString("base64url");
}

export function hashKey(key: string): string {
  return createHash("sha256").update(key).digest("hex");
}

function displayPrefix(key: string): string {
  const cut = key.indexOf("-") + 1 + DISPLAY_PREFIX_CHARS;
  return key.slice(0, cut);
}

function constantTimeEqual(a: string, b: string): boolean {
  // Hashing first gives equal lengths, so timingSafeEqual never throws and length does not leak.
  return timingSafeEqual(createHash("sha256").update(a).digest(), createHash("sha256").update(b).digest());
}

/** The key a request carries: `Authorization: Bearer KEY` first, then `X-API-Key: KEY`. */
export function keyFromHeaders(headers: Record<string, string | string[] | undefined>): string | null {
  const authorization = headers.authorization;
  if (typeof authorization === "string") {
    const match = /^Bearer\s+(\S+)\s*$/i.exec(authorization);
    if (match) return match[1];
  }
  const apiKey = headers["x-api-key"];
  if (typeof apiKey === "string" && apiKey.trim()) return apiKey.trim();
  return null;
}

// ---- runner ids -------------------------------------------------------------------------------

const WOLF_PREFIX = "wolf-";
const WOLF_RUNNER_PATTERN = /^wolf-[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const SANDBOX_RUNNER_PREFIX = "sandbox-";
/** Any runner id an admin may use: a conservative token shape, at most 128 characters. */
const ANY_RUNNER_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;

/** The session id in `sandbox-{sessionID}`, or null for any other shape. */
export function sessionIdOfRunner(runnerId: string): string | null {
  if (!runnerId.startsWith(SANDBOX_RUNNER_PREFIX)) return null;
  const id = runnerId.slice(SANDBOX_RUNNER_PREFIX.length);
  return isSessionId(id) ? id : null;
}

function invalidRunnerId(): ApiError {
  return new ApiError(400, AUTH_ERROR_CODES.invalidRunnerId, "invalid runner ID format");
}

/** 403 for a host id no admin has created (the runner token and host registrations meet it). */
export function hostNotCreated(hostId: string): ApiError {
  return new ApiError(
    403,
    AUTH_ERROR_CODES.hostNotCreated,
    `host ${hostId} does not exist: an admin creates it first (revdial wolf create ${hostId})`,
  );
}

function notOwned(): ApiError {
  return new ApiError(403, AUTH_ERROR_CODES.notOwned, "unauthorized: session not owned by user");
}

// ---- guards -----------------------------------------------------------------------------------

/** The 401 for a request without a valid key: what was missing, or that the key was refused. */
export function unauthenticated(headers: Record<string, string | string[] | undefined>): ApiError {
  const message =
    keyFromHeaders(headers) !== null
      ? "invalid or expired API key"
      : "API key required: send Authorization: Bearer KEY or X-API-Key: KEY";
  return new ApiError(401, AUTH_ERROR_CODES.required, message);
}

/** The request's principal; 401 when the preHandler did not set one. */
export function principalOf(request: FastifyRequest): Principal {
  const principal = request.principal;
  if (!principal) throw new ApiError(401, AUTH_ERROR_CODES.required, "API key required");
  return principal;
}

export function requireAdmin(principal: Principal): void {
  if (!principal.admin) throw new ApiError(403, AUTH_ERROR_CODES.forbidden, "admin access required");
}

/** Read access never implies write. */
export function requireWrite(principal: Principal): void {
  if (principal.access !== "write") {
    throw new ApiError(
      403,
      AUTH_ERROR_CODES.readOnly,
      "this API key has read access only; write access required",
    );
  }
}

/** A user (or admin) key: session keys and the runner token may not call user endpoints. */
export function requireUser(principal: Principal): string {
  if ((principal.scope !== "user" && principal.scope !== "admin") || !principal.userId) {
    throw new ApiError(403, AUTH_ERROR_CODES.scope, `a ${principal.scope} key cannot call this endpoint`);
  }
  return principal.userId;
}

/** True when a user or admin principal may see a record owned by `ownerId` (projects, tasks). */
export function canAccessOwned(principal: Principal, ownerId: string): boolean {
  if (principal.scope !== "user" && principal.scope !== "admin") return false;
  return principal.admin || principal.userId === ownerId;
}

/** True when the principal may see and act on the session. */
export function canAccessSession(principal: Principal, session: Session): boolean {
  if (principal.scope === "session") return principal.sessionId === session.id;
  if (principal.scope === "runner" || principal.scope === "host") return false;
  return principal.admin || principal.userId === session.ownerId;
}

// ---- the Auth component -----------------------------------------------------------------------

export interface AuthOptions {
  store: Store;
  /** The system secret hosts register with; unset disables the runner token. At least 8 characters. */
  runnerToken?: string | null;
  logger: Logger;
  /** last_used_at is written at most once per key per this many ms (default 60 000). */
  touchIntervalMs?: number;
  /** Most keys whose last write time is remembered (default 10 000); the memory is cleared past it. */
  maxTrackedKeys?: number;
  /** Milliseconds clock for expiry and touch throttling (default Date.now). */
  now?: () => number;
  /**
   * How long a key's principal is remembered after a lookup (default 2 000 ms; 0 disables). Calls
   * through the proxy are hot, and a store lookup per call would cap them; the price is that a
   * revoked key keeps working for at most this long unless forgetSession() is called.
   */
  cacheTtlMs?: number;
}

const AUTH_DEFAULTS = Object.freeze({
  touchIntervalMs: 60_000,
  maxTrackedKeys: 10_000,
  minRunnerTokenLength: 8,
  cacheTtlMs: 2_000,
});

const RUNNER_TOKEN_PRINCIPAL: Principal = Object.freeze({
  keyId: "runner-token",
  userId: null,
  admin: false,
  scope: "runner",
  sessionId: null,
  hostId: null,
  access: "write",
});

function validateAuthOptions(options: AuthOptions): void {
  if (!options?.store) throw new InvalidOptionError("store", "is required");
  if (!options.logger) throw new InvalidOptionError("logger", "is required");
  const token = options.runnerToken;
  if (token != null && (typeof token !== "string" || token.length < AUTH_DEFAULTS.minRunnerTokenLength)) {
    throw new InvalidOptionError(
      "runnerToken",
      `must be a string of at least ${AUTH_DEFAULTS.minRunnerTokenLength} characters`,
    );
  }
  for (const name of ["touchIntervalMs", "maxTrackedKeys", "cacheTtlMs"] as const) {
    const value = options[name];
    if (value !== undefined && (!Number.isInteger(value) || value < 0)) {
      throw new InvalidOptionError(name, "must be a non-negative integer");
    }
  }
}

/**
 * Authenticates requests and authorizes tunnel registrations. Stateless apart from the memory of
 * when each key's last_used_at was last written (bounded by maxTrackedKeys).
 */
export class Auth {
  readonly #store: Store;
  readonly #runnerToken: string | null;
  readonly #logger: Logger;
  readonly #touchIntervalMs: number;
  readonly #maxTrackedKeys: number;
  readonly #now: () => number;
  readonly #lastTouched = new Map<string, number>();
  readonly #cacheTtlMs: number;
  readonly #runnerTokenKeyShaped: boolean;
  /** key -> principal and when to look it up again; bounded by maxTrackedKeys. */
  readonly #cache = new Map<string, { principal: Principal; until: number }>();
  /** key -> its store lookup in flight; an entry lives only as long as its query. */
  readonly #lookups = new Map<string, Promise<Principal | null>>();
  /** Counts forgetSession/forgetHost calls, so a lookup that spans one is not remembered. */
  #forgets = 0;

  constructor(options: AuthOptions) {
    validateAuthOptions(options);
    this.#store = options.store;
    this.#runnerToken = options.runnerToken ?? null;
    this.#logger = options.logger;
    this.#touchIntervalMs = options.touchIntervalMs ?? AUTH_DEFAULTS.touchIntervalMs;
    this.#maxTrackedKeys = options.maxTrackedKeys ?? AUTH_DEFAULTS.maxTrackedKeys;
    this.#now = options.now ?? Date.now;
    this.#cacheTtlMs = options.cacheTtlMs ?? AUTH_DEFAULTS.cacheTtlMs;
    const token = this.#runnerToken ?? "";
    this.#runnerTokenKeyShaped = isKeyShaped(token);
  }

  /** The principal for a request's headers, or null when it carries no valid key. */
  async authenticate(headers: Record<string, string | string[] | undefined>): Promise<Principal | null> {
    const known = this.authenticateKnown(headers);
    if (known !== undefined) return known;
    return this.#lookUp(keyFromHeaders(headers) as string);
  }

  /**
   * authenticate() without a promise, when the answer needs no store: no key or one that cannot be
   * a key (null), the runner token, or a key whose lookup is still remembered (cacheTtlMs).
   * Undefined when only the store can tell: call authenticate(). The admin proxy's hot path uses it,
   * so a remembered key costs no promise; a revoked key is refused as soon as authenticate() is.
   */
  authenticateKnown(headers: Record<string, string | string[] | undefined>): Principal | null | undefined {
    const key = keyFromHeaders(headers);
    if (!key) return null;
    const keyShaped = isKeyShaped(key);
    // A key-shaped secret cannot be a runner token that is not key-shaped: skip the comparison (two
    // SHA-256 digests) on the hot path of user and session keys.
    const mayBeRunnerToken = this.#runnerToken !== null && (!keyShaped || this.#runnerTokenKeyShaped);
    if (mayBeRunnerToken && constantTimeEqual(key, this.#runnerToken as string))
      return RUNNER_TOKEN_PRINCIPAL;
    if (!keyShaped) return null;
    // Looked up by the key as presented: hashing it on every call would cost more than the lookup.
    const cached = this.#cache.get(key);
    if (cached && cached.until > this.#now()) return cached.principal;
    return undefined;
  }

  /**
   * A key-shaped key not remembered: the store's answer, remembered for cacheTtlMs. Calls that need
   * the same key while its lookup runs share it, so a remembered key expiring under load costs one
   * store query, not one per call in flight. A forget (revocation) while it runs makes later calls
   * ask the store again, and the answer of the earlier lookup is not remembered.
   */
  #lookUp(key: string): Promise<Principal | null> {
    const shared = this.#lookups.get(key);
    if (shared) return shared;
    const pending: Promise<Principal | null> = this.#lookUpInStore(key).finally(() => {
      if (this.#lookups.get(key) === pending) this.#lookups.delete(key);
    });
    this.#lookups.set(key, pending);
    return pending;
  }

  async #lookUpInStore(key: string): Promise<Principal | null> {
    const forgets = this.#forgets;
    const found = await this.#store.apiKeys.findByHash(hashKey(key));
    if (!found) return null;
    const { key: record, user } = found;
    const now = this.#now();
    if (record.expiresAt && record.expiresAt.getTime() <= now) return null;
    this.#touch(record.id);
    const principal = principalFor(record, user);
    if (forgets === this.#forgets) {
      this.#remember(
        key,
        principal,
        record.expiresAt ? record.expiresAt.getTime() : Number.POSITIVE_INFINITY,
      );
    }
    return principal;
  }

  #remember(key: string, principal: Principal, expiresAt: number): void {
    if (this.#cacheTtlMs === 0) return;
    if (this.#cache.size >= this.#maxTrackedKeys) this.#cache.clear();
    this.#cache.set(key, { principal, until: Math.min(expiresAt, this.#now() + this.#cacheTtlMs) });
  }

  /** Lookups in flight may have read a key being revoked: later calls do not share them. */
  #forgetLookups(): void {
    this.#forgets++;
    this.#lookups.clear();
  }

  /** Drops remembered principals of a session's keys (call when they are revoked). */
  forgetSession(sessionId: string): void {
    this.#forgetLookups();
    for (const [key, entry] of this.#cache) {
      if (entry.principal.sessionId === sessionId) this.#cache.delete(key);
    }
  }

  /** Drops the remembered principal of one key (call when it is revoked). */
  forgetKey(keyId: string): void {
    this.#forgetLookups();
    for (const [key, entry] of this.#cache) {
      if (entry.principal.keyId === keyId) this.#cache.delete(key);
    }
  }

  /** Drops remembered principals of a host's keys (call when they are rotated or revoked). */
  forgetHost(hostId: string): void {
    this.#forgetLookups();
    for (const [key, entry] of this.#cache) {
      if (entry.principal.hostId === hostId) this.#cache.delete(key);
    }
  }

  /**
   * Sets request.principal, or answers 401. Routes name it as their `preHandler`; in an app set up
   * with authenticateBeforeBody() it runs in onRequest instead, before the body is read. A refused
   * request whose body is still arriving gets `Connection: close`, so Node does not read that body
   * to reuse the connection.
   */
  readonly preHandler = async (request: FastifyRequest, reply?: FastifyReply): Promise<void> => {
    request.principal = await this.authenticate(request.headers);
    if (!request.principal) {
      if (reply && hasUnreadBody(request.raw)) reply.header("connection", "close");
      throw unauthenticated(request.headers);
    }
  };

  /**
   * Whether `principal` may register a tunnel as `runnerId` (called by the revdial route before it
   * accepts a tunnel). Throws an ApiError (400 / 403) when not.
   */
  async authorizeRunner(principal: Principal, runnerId: string): Promise<RunnerGrant> {
    // A registration writes (it may replace a live tunnel): read-only keys never make one.
    requireWrite(principal);
    if (principal.scope === "runner") return this.#authorizeRunnerToken(runnerId);
    if (principal.scope === "host") return this.#authorizeHost(principal, runnerId);
    if (principal.admin) return this.#authorizeAdmin(runnerId);
    const sessionId = sessionIdOfRunner(runnerId);
    if (!sessionId) throw invalidRunnerId();
    if (principal.scope === "session" && principal.sessionId !== sessionId) {
      throw new ApiError(
        403,
        AUTH_ERROR_CODES.forbidden,
        "unauthorized: a session key may register only its own sandbox",
      );
    }
    const session = await this.#store.sessions.get(sessionId);
    if (!session || session.ownerId !== principal.userId) throw notOwned();
    return { runnerId, kind: "sandbox", sessionId, ownerId: session.ownerId };
  }

  async #authorizeRunnerToken(runnerId: string): Promise<RunnerGrant> {
    if (!WOLF_RUNNER_PATTERN.test(runnerId)) {
      throw new ApiError(
        403,
        AUTH_ERROR_CODES.forbidden,
        "the runner token may register only wolf-* runner ids",
      );
    }
    const hostId = runnerId.slice(WOLF_PREFIX.length);
    if (!(await this.#store.wolfInstances.get(hostId))) throw hostNotCreated(hostId);
    return { runnerId, kind: "wolf", sessionId: null, ownerId: null };
  }

  #authorizeHost(principal: Principal, runnerId: string): RunnerGrant {
    if (runnerId !== WOLF_PREFIX + principal.hostId) {
      throw new ApiError(
        403,
        AUTH_ERROR_CODES.forbidden,
        `a host key may register only its own runner id wolf-${principal.hostId}`,
      );
    }
    return { runnerId, kind: "wolf", sessionId: null, ownerId: null };
  }

  async #authorizeAdmin(runnerId: string): Promise<RunnerGrant> {
    if (!ANY_RUNNER_PATTERN.test(runnerId)) throw invalidRunnerId();
    if (WOLF_RUNNER_PATTERN.test(runnerId)) return { runnerId, kind: "wolf", sessionId: null, ownerId: null };
    const sessionId = sessionIdOfRunner(runnerId);
    if (!sessionId) return { runnerId, kind: "other", sessionId: null, ownerId: null };
    const session = await this.#store.sessions.get(sessionId);
    return { runnerId, kind: "sandbox", sessionId, ownerId: session?.ownerId ?? null };
  }

  /** The session if the principal may see it; 404 when it is missing or someone else's. */
  async loadOwnedSession(principal: Principal, sessionId: string): Promise<Session> {
    const session = isSessionId(sessionId) ? await this.#store.sessions.get(sessionId) : null;
    if (!session || !canAccessSession(principal, session)) {
      throw new ApiError(404, AUTH_ERROR_CODES.sessionNotFound, `session ${sessionId} not found`);
    }
    return session;
  }

  /** Creates a user and its first write key; returns the key in clear (shown once, never stored). */
  async createUser(input: { name: string; admin?: boolean }): Promise<{ user: User; apiKey: string }> {
    const apiKey = generateKey("user");
    const user = await this.#store.transaction(async (tx) => {
      const created = await tx.users.create(input);
      await tx.apiKeys.create(keyRecord(created.id, apiKey, "user", "write", null, "initial"));
      return created;
    });
    this.#logger.info({ user_id: user.id, admin: user.admin }, "user created");
    return { user, apiKey };
  }

  /** Mints another user key (e.g. a read-only one). */
  async createUserKey(
    userId: string,
    options: { access?: KeyAccess; name?: string; expiresAt?: Date | null } = {},
  ) {
    const apiKey = generateKey("user");
    const record = keyRecord(userId, apiKey, "user", options.access ?? "write", null, options.name ?? "");
    const key = await this.#store.apiKeys.create({ ...record, expiresAt: options.expiresAt ?? null });
    return { keyId: key.id, apiKey };
  }

  /** Mints the scoped key a sandbox registers with: it reaches only `sandbox-{session.id}`. */
  async createSessionKey(session: Session, options: { expiresAt?: Date | null } = {}) {
    const apiKey = generateKey("session");
    const record = keyRecord(session.ownerId, apiKey, "session", "write", session.id, "sandbox");
    const key = await this.#store.apiKeys.create({ ...record, expiresAt: options.expiresAt ?? null });
    this.#logger.debug({ session_id: session.id }, "session key minted");
    return { keyId: key.id, apiKey };
  }

  /**
   * Mints a host key bound to `hostId` (which must exist), on behalf of the admin `createdBy`. With
   * `replace`, every earlier key of that host is revoked in the same transaction (rotation).
   * Returns the key in clear: shown once, never stored.
   */
  async createHostKey(hostId: string, createdBy: string, options: { replace?: boolean } = {}) {
    const apiKey = generateKey("host");
    const key = await this.#store.transaction(async (tx) => {
      if (options.replace) await tx.apiKeys.revokeForHost(hostId);
      return tx.apiKeys.create({
        ...keyRecord(createdBy, apiKey, "host", "write", null, `host ${hostId}`),
        hostId,
      });
    });
    if (options.replace) this.forgetHost(hostId);
    this.#logger.info({ wolf_id: hostId, replaced: options.replace === true }, "host key minted");
    return { keyId: key.id, apiKey };
  }

  #touch(keyId: string): void {
    const now = this.#now();
    const last = this.#lastTouched.get(keyId);
    if (last !== undefined && now - last < this.#touchIntervalMs) return;
    if (this.#lastTouched.size >= this.#maxTrackedKeys) this.#lastTouched.clear();
    this.#lastTouched.set(keyId, now);
    this.#store.apiKeys.touch(keyId, new Date(now)).catch((err: unknown) => {
      this.#logger.debug({ err, key_id: keyId }, "could not record key use");
    });
  }
}

function principalFor(
  record: { id: string; scope: KeyScope; access: KeyAccess; sessionId: string | null; hostId: string | null },
  user: User,
): Principal {
  const { id: keyId, scope, access, sessionId, hostId } = record;
  const base = { keyId, userId: user.id, admin: false, sessionId: null, hostId: null, access };
  if (scope === "session") return { ...base, scope, sessionId };
  if (scope === "runner") return { ...base, scope };
  // A host key acts for its host, not for the admin who minted it.
  if (scope === "host") return { ...base, userId: null, scope, hostId };
  return { ...base, admin: user.admin, scope: user.admin ? "admin" : "user" };
}

/**
 * True when the request announced a body that has not fully arrived. A refusal sent then carries
 * `Connection: close`, so Node does not read that body to reuse the connection.
 */
export function hasUnreadBody(raw: IncomingMessage): boolean {
  if (raw.complete) return false;
  const length = Number(raw.headers["content-length"] ?? 0);
  return length > 0 || raw.headers["transfer-encoding"] !== undefined;
}

/**
 * Makes every route that names `auth.preHandler` authenticate in onRequest instead, before Fastify
 * reads and parses the body. Call once on the app, before any route is registered (onRoute hooks
 * see only routes added after them; child plugins inherit the hook).
 */
export function authenticateBeforeBody(app: FastifyInstance, auth: Auth): void {
  app.addHook("onRoute", (route: RouteOptions) => {
    const pre = asList(route.preHandler);
    if (!pre.includes(auth.preHandler)) return;
    route.preHandler = pre.filter((h) => h !== auth.preHandler) as RouteOptions["preHandler"];
    route.onRequest = [auth.preHandler, ...asList(route.onRequest)] as RouteOptions["onRequest"];
  });
}

function asList(hooks: unknown): unknown[] {
  if (Array.isArray(hooks)) return hooks;
  return hooks ? [hooks] : [];
}

function keyRecord(
  userId: string,
  apiKey: string,
  scope: KeyScope,
  access: KeyAccess,
  sessionId: string | null,
  name: string,
) {
  return {
    userId,
    keyHash: hashKey(apiKey),
    keyPrefix: displayPrefix(apiKey),
    name,
    scope,
    access,
    sessionId,
  };
}

export function createAuth(options: AuthOptions): Auth {
  return new Auth(options);
}

// ---- the first admin key ----------------------------------------------------------------------

export const ADMIN_KEY_FILE = "admin.key";
export const ADMIN_USER_NAME = "admin";

export function adminKeyPath(dataDir: string): string {
  return join(dataDir, ADMIN_KEY_FILE);
}

/**
 * On the first start (no admin user yet): creates the admin user and key, stores only the key's
 * hash, writes the key to `${dataDir}/admin.key` (mode 0600) and returns it for the server to
 * print once. On later starts returns null. If an admin exists but the file is gone, it does NOT
 * mint a second admin: it returns null and the server says where the key was expected.
 * The file is written inside the transaction, so a failed write leaves no admin behind.
 */
export async function ensureAdminKey(options: {
  store: Store;
  dataDir: string;
  logger: Logger;
}): Promise<string | null> {
  const { store, dataDir, logger } = options;
  if (await store.users.firstAdmin()) return null;
  const apiKey = generateKey("user");
  const path = adminKeyPath(dataDir);
  try {
    await store.transaction(async (tx) => {
      const admin = await tx.users.create({ name: ADMIN_USER_NAME, admin: true });
      await tx.apiKeys.create(keyRecord(admin.id, apiKey, "user", "write", null, "admin"));
      await writeSecretFile(path, apiKey);
    });
  } catch (err) {
    // Another process starting on the same database made the admin first.
    if (hasCode(err, STORE_ERROR_CODES.conflict)) return null;
    throw err;
  }
  logger.info({ path }, "admin key created");
  return apiKey;
}

async function writeSecretFile(path: string, content: string): Promise<void> {
  await mkdir(join(path, ".."), { recursive: true });
  const temp = `${path}.${process.pid}.tmp`;
  await writeFile(temp, `${content}\n`, { mode: 0o600 });
  await rename(temp, path);
}

// Row ids: a type prefix and a lowercase ULID (26 characters, time-ordered), e.g.
// `ses_01jz3k8m5q6r7s8t9v0w1x2y3z`. The prefix tells a reader what an id names in any log line.

import { monotonicFactory } from "ulid";

// Monotonic within a millisecond, so ids made in one burst sort in creation order (rows that
// share a timestamp are ordered by id). The factory's only state is the last id it made.
const ulid = monotonicFactory();

export const ID_PREFIXES = Object.freeze({
  user: "usr_",
  apiKey: "key_",
  project: "prj_",
  specTask: "tsk_",
  session: "ses_",
  interaction: "int_",
});

export type IdKind = keyof typeof ID_PREFIXES;

export function newId(kind: IdKind): string {
  return ID_PREFIXES[kind] + ulid().toLowerCase();
}

/** Shape of a session id: `ses_` plus 26 lowercase Crockford base32 characters. */
export const SESSION_ID_PATTERN = /^ses_[0-9a-hjkmnp-tv-z]{26}$/;

export function isSessionId(text: string): boolean {
  return SESSION_ID_PATTERN.test(text);
}

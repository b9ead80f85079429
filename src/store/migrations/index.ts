// The ordered list of schema migrations. A migration is never edited once released: a change to
// the schema is a new file with the next version, appended here.

import { migration001 } from "./001-initial-schema.ts";
import { migration002 } from "./002-host-keys.ts";
import { migration003 } from "./003-agent-sync-interactions.ts";
import { migration004 } from "./004-cluster-directory.ts";

export interface Migration {
  readonly version: number;
  readonly name: string;
  readonly sql: string;
}

export const MIGRATIONS: readonly Migration[] = Object.freeze([
  migration001,
  migration002,
  migration003,
  migration004,
]);

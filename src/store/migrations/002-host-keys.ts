// Migration 2: credentials bound to one sandbox host. A host key (scope `host`) names its host in
// api_keys.host_id and dies with the host's record. wolf_instances.max_sandboxes_limit is the
// capacity an admin granted: a host's own registration may lower its capacity, never raise it past
// that. Hosts that exist already keep the capacity they have as their limit.

export const migration002 = Object.freeze({
  version: 2,
  name: "host-keys",
  sql: `
ALTER TABLE api_keys ADD COLUMN host_id text REFERENCES wolf_instances(id) ON DELETE CASCADE;
ALTER TABLE api_keys DROP CONSTRAINT api_keys_scope_check;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_scope_check
  CHECK (scope IN ('user', 'session', 'runner', 'host'));
ALTER TABLE api_keys ADD CONSTRAINT api_keys_host_check CHECK ((scope = 'host') = (host_id IS NOT NULL));
CREATE INDEX api_keys_host_idx ON api_keys(host_id);

ALTER TABLE wolf_instances ADD COLUMN max_sandboxes_limit integer NOT NULL DEFAULT 10
  CHECK (max_sandboxes_limit >= 0);
UPDATE wolf_instances SET max_sandboxes_limit = max_sandboxes;
`,
});

// Migration 1: the control plane's tables. Ids are text with a type prefix (usr_, key_, prj_, tsk_,
// ses_, int_) and a lowercase ULID, except wolf_instances whose id is chosen by the host (`--id`).

export const migration001 = Object.freeze({
  version: 1,
  name: "initial-schema",
  sql: `
CREATE TABLE users (
  id          text PRIMARY KEY,
  name        text NOT NULL UNIQUE,
  admin       boolean NOT NULL DEFAULT false,
  created_at  timestamptz NOT NULL,
  updated_at  timestamptz NOT NULL
);

CREATE TABLE projects (
  id                 text PRIMARY KEY,
  owner_id           text NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  name               text NOT NULL,
  description        text NOT NULL DEFAULT '',
  sample_project_id  text,
  created_at         timestamptz NOT NULL,
  updated_at         timestamptz NOT NULL
);
CREATE INDEX projects_owner_idx ON projects(owner_id);

CREATE TABLE spec_tasks (
  id           text PRIMARY KEY,
  project_id   text NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
  name         text NOT NULL,
  description  text NOT NULL DEFAULT '',
  status       text NOT NULL DEFAULT 'backlog',
  priority     text NOT NULL DEFAULT 'medium',
  created_at   timestamptz NOT NULL,
  updated_at   timestamptz NOT NULL
);
CREATE INDEX spec_tasks_project_idx ON spec_tasks(project_id);

CREATE TABLE wolf_instances (
  id              text PRIMARY KEY,
  name            text NOT NULL,
  address         text NOT NULL DEFAULT '',
  status          text NOT NULL DEFAULT 'online',
  max_sandboxes   integer NOT NULL DEFAULT 10 CHECK (max_sandboxes >= 0),
  last_heartbeat  timestamptz,
  labels          jsonb NOT NULL DEFAULT '{}'::jsonb,
  created_at      timestamptz NOT NULL,
  updated_at      timestamptz NOT NULL
);

CREATE TABLE sessions (
  id                     text PRIMARY KEY,
  owner_id               text NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  name                   text NOT NULL DEFAULT '',
  spec_task_id           text REFERENCES spec_tasks(id) ON DELETE SET NULL,
  status                 text NOT NULL,
  wolf_instance_id       text REFERENCES wolf_instances(id) ON DELETE SET NULL,
  lobby_id               text,
  created_at             timestamptz NOT NULL,
  updated_at             timestamptz NOT NULL,
  last_activity_at       timestamptz NOT NULL,
  final_screenshot       bytea,
  final_screenshot_type  text
);
CREATE INDEX sessions_owner_idx ON sessions(owner_id, created_at);
CREATE INDEX sessions_wolf_status_idx ON sessions(wolf_instance_id, status);

CREATE TABLE api_keys (
  id            text PRIMARY KEY,
  user_id       text NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  key_hash      text NOT NULL UNIQUE,
  key_prefix    text NOT NULL,
  name          text NOT NULL DEFAULT '',
  scope         text NOT NULL CHECK (scope IN ('user', 'session', 'runner')),
  access        text NOT NULL CHECK (access IN ('read', 'write')),
  session_id    text REFERENCES sessions(id) ON DELETE CASCADE,
  created_at    timestamptz NOT NULL,
  last_used_at  timestamptz,
  expires_at    timestamptz,
  CHECK ((scope = 'session') = (session_id IS NOT NULL))
);
CREATE INDEX api_keys_user_idx ON api_keys(user_id);

CREATE TABLE interactions (
  id          text PRIMARY KEY,
  session_id  text NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
  role        text NOT NULL CHECK (role IN ('user', 'assistant', 'system')),
  content     text NOT NULL DEFAULT '',
  state       text NOT NULL DEFAULT 'waiting',
  created_at  timestamptz NOT NULL,
  updated_at  timestamptz NOT NULL
);
CREATE INDEX interactions_session_idx ON interactions(session_id, created_at);
`,
});

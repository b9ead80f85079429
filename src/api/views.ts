// The JSON shapes the control plane answers with, as types only: the routes' view builders are
// declared to return them (route-views.ts, users.ts, wolf-instances.ts, sync-hub.ts), and the web
// dashboard reads them (web/src/api.ts), so a field renamed on one side fails the other's type
// check. No imports: the dashboard's compiler sees this file and nothing of the server behind it.

/** GET /api/v1/users/me */
export interface MeView {
  id: string | null;
  name: string | null;
  admin: boolean;
  scope: string;
  access: string;
  session_id: string | null;
}

export interface SessionView {
  id: string;
  owner: string;
  name: string;
  spec_task_id: string | null;
  status: string;
  wolf_instance_id: string | null;
  lobby_id: string | null;
  created_at: string;
  updated_at: string;
  last_activity_at: string;
  sandbox_connected: boolean;
}

export interface ProjectView {
  id: string;
  owner: string;
  name: string;
  description: string;
  sample_project_id: string | null;
  created_at: string;
  updated_at: string;
}

export interface SpecTaskView {
  id: string;
  project_id: string;
  name: string;
  description: string;
  status: string;
  priority: string;
  created_at: string;
  updated_at: string;
}

export interface UserView {
  id: string;
  name: string;
  admin: boolean;
  created_at: string | null;
}

/** An API key as listed (never the secret, which only its creation answers once). */
export interface KeyView {
  id: string;
  user_id: string;
  prefix: string;
  name: string;
  scope: string;
  access: string;
  session_id: string | null;
  host_id: string | null;
  created_at: string;
  last_used_at: string | null;
  expires_at: string | null;
}

/** A sandbox host (Wolf instance). */
export interface WolfInstanceView {
  id: string;
  name: string;
  address: string;
  status: string;
  last_heartbeat: string | null;
  connected_sandboxes: number;
  max_sandboxes: number;
  /** The capacity the admin granted: the host's own registration cannot go above it. */
  max_sandboxes_limit: number | null;
  labels: Record<string, string>;
  tunnel_connected: boolean;
  created_at: string;
  updated_at: string;
}

export interface InteractionView {
  id: string;
  session_id: string;
  role: string;
  content: string;
  response: string;
  messages: Array<{ message_id: string; role: string; content: string }>;
  state: string;
  delivery: string;
  created_at: string;
  updated_at: string;
}

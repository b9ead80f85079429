// The JSON shapes the control-plane routes answer with: store records (camelCase, Date) turned into
// the API's snake_case fields with ISO timestamps. One place, so a field is named the same everywhere;
// the shapes themselves are in ../views.ts, which the web dashboard reads too.

import type { Project, Session, SpecTask, User } from "../../store/index.ts";
import type { ProjectView, SessionView, SpecTaskView, UserView } from "../views.ts";

export type { SessionView } from "../views.ts";

function iso(date: Date | null): string | null {
  return date ? date.toISOString() : null;
}

export function sessionView(session: Session, sandboxConnected: boolean): SessionView {
  return {
    id: session.id,
    owner: session.ownerId,
    name: session.name,
    spec_task_id: session.specTaskId,
    status: session.status,
    wolf_instance_id: session.wolfInstanceId,
    lobby_id: session.lobbyId,
    created_at: session.createdAt.toISOString(),
    updated_at: session.updatedAt.toISOString(),
    last_activity_at: session.lastActivityAt.toISOString(),
    sandbox_connected: sandboxConnected,
  };
}

export function projectView(project: Project): ProjectView {
  return {
    id: project.id,
    owner: project.ownerId,
    name: project.name,
    description: project.description,
    sample_project_id: project.sampleProjectId,
    created_at: project.createdAt.toISOString(),
    updated_at: project.updatedAt.toISOString(),
  };
}

export function specTaskView(task: SpecTask): SpecTaskView {
  return {
    id: task.id,
    project_id: task.projectId,
    name: task.name,
    description: task.description,
    status: task.status,
    priority: task.priority,
    created_at: task.createdAt.toISOString(),
    updated_at: task.updatedAt.toISOString(),
  };
}

export function userView(user: User): UserView {
  return { id: user.id, name: user.name, admin: user.admin, created_at: iso(user.createdAt) };
}

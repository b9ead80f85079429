// Data access for projects and their spec tasks (a task belongs to one project; its owner is the
// project's owner, which is what ownership checks compare).

import type { Clock } from "./clock.ts";
import { newId } from "./ids.ts";
import type { SqlExecutor } from "./sql-executor.ts";

export interface Project {
  id: string;
  ownerId: string;
  name: string;
  description: string;
  sampleProjectId: string | null;
  createdAt: Date;
  updatedAt: Date;
}

interface ProjectRow {
  id: string;
  owner_id: string;
  name: string;
  description: string;
  sample_project_id: string | null;
  created_at: Date;
  updated_at: Date;
}

const COLUMNS = "id, owner_id, name, description, sample_project_id, created_at, updated_at";

function toProject(row: ProjectRow): Project {
  return {
    id: row.id,
    ownerId: row.owner_id,
    name: row.name,
    description: row.description,
    sampleProjectId: row.sample_project_id,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  };
}

export class ProjectRepository {
  readonly #db: SqlExecutor;
  readonly #clock: Clock;

  constructor(db: SqlExecutor, clock: Clock) {
    this.#db = db;
    this.#clock = clock;
  }

  async create(input: {
    ownerId: string;
    name: string;
    description?: string;
    sampleProjectId?: string | null;
  }): Promise<Project> {
    const { rows } = await this.#db.query<ProjectRow>(
      `INSERT INTO projects (id, owner_id, name, description, sample_project_id, created_at, updated_at)
       VALUES ($1, $2, $3, $4, $5, $6, $6) RETURNING ${COLUMNS}`,
      [
        newId("project"),
        input.ownerId,
        input.name,
        input.description ?? "",
        input.sampleProjectId ?? null,
        this.#clock(),
      ],
    );
    return toProject(rows[0]);
  }

  async get(id: string): Promise<Project | null> {
    const { rows } = await this.#db.query<ProjectRow>(`SELECT ${COLUMNS} FROM projects WHERE id = $1`, [id]);
    return rows[0] ? toProject(rows[0]) : null;
  }

  /** Projects, oldest first; only `ownerId`'s when given. */
  async list(filter: { ownerId?: string } = {}): Promise<Project[]> {
    const { rows } = await this.#db.query<ProjectRow>(
      `SELECT ${COLUMNS} FROM projects WHERE ($1::text IS NULL OR owner_id = $1) ORDER BY created_at, id`,
      [filter.ownerId ?? null],
    );
    return rows.map(toProject);
  }
}

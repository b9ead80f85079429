// JSON schemas shared by the control-plane routes (Fastify validates input against them and
// serializes output with them). Per-route schemas live beside their routes.

export const idParams = Object.freeze({
  type: "object",
  required: ["id"],
  properties: { id: { type: "string", minLength: 1, maxLength: 64 } },
  additionalProperties: false,
});

export const sessionIdParams = Object.freeze({
  type: "object",
  required: ["sessionID"],
  properties: { sessionID: { type: "string", minLength: 1, maxLength: 64 } },
  additionalProperties: false,
});

const nullableString = Object.freeze({ type: ["string", "null"] });
const timestamp = Object.freeze({ type: "string", format: "date-time" });

export const sessionSchema = Object.freeze({
  type: "object",
  properties: {
    id: { type: "string" },
    owner: { type: "string" },
    name: { type: "string" },
    spec_task_id: nullableString,
    status: { type: "string" },
    wolf_instance_id: nullableString,
    lobby_id: nullableString,
    created_at: timestamp,
    updated_at: timestamp,
    last_activity_at: timestamp,
    sandbox_connected: { type: "boolean" },
  },
});

export const projectSchema = Object.freeze({
  type: "object",
  properties: {
    id: { type: "string" },
    owner: { type: "string" },
    name: { type: "string" },
    description: { type: "string" },
    sample_project_id: nullableString,
    created_at: timestamp,
    updated_at: timestamp,
  },
});

export const specTaskSchema = Object.freeze({
  type: "object",
  properties: {
    id: { type: "string" },
    project_id: { type: "string" },
    name: { type: "string" },
    description: { type: "string" },
    status: { type: "string" },
    priority: { type: "string" },
    created_at: timestamp,
    updated_at: timestamp,
  },
});

// Migration 3: interactions become conversation turns for the agent sync channel. A turn is the
// user's message (`content`) and the agent's answer: `messages` holds the agent's messages by
// message_id (streamed updates replace a message's content), `response` their text joined.
// `delivery` tracks the user's message towards the agent so that a dropped socket neither loses nor
// repeats it: none (not a sync turn) -> queued (no agent has it) -> sent (written to a socket) ->
// acked (the agent answered about it). The state gains `cancelled`, and both columns get a CHECK.

export const migration003 = Object.freeze({
  version: 3,
  name: "agent-sync-interactions",
  sql: `
ALTER TABLE interactions
  ADD COLUMN response  text  NOT NULL DEFAULT '',
  ADD COLUMN messages  jsonb NOT NULL DEFAULT '[]'::jsonb,
  ADD COLUMN delivery  text  NOT NULL DEFAULT 'none';
ALTER TABLE interactions
  ADD CONSTRAINT interactions_state_check CHECK (state IN ('waiting', 'complete', 'error', 'cancelled'));
ALTER TABLE interactions
  ADD CONSTRAINT interactions_delivery_check CHECK (delivery IN ('none', 'queued', 'sent', 'acked'));
CREATE INDEX interactions_waiting_idx ON interactions(session_id, created_at) WHERE state = 'waiting';
`,
});

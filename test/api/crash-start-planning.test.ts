// Crash-safe start-planning: the API is cut off after each recorded step of start-planning (a fault
// hook that stops the start there with no clean-up, as kill -9 would) and restarted; the lifecycle
// sweeper (short bounds here) then settles every state: no task left in `planning` without a
// session, no session `starting` forever, no `running` session without a lobby, and every host's
// count equal to the lobbies it really runs. A second start-planning resumes a session a crash left
// `starting` instead of failing or making a second one. Real server, real host, real tunnels; the
// sandboxes are real agents serving a fake desktop (crash-harness.ts).

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { START_PLANNING_STEPS } from "../../src/api/routes/lifecycle.ts";
import { World } from "../host/host-harness.ts";
import { type FakeDesktop, startFakeDesktop } from "./control-plane-harness.ts";
import { AgentDriver } from "./crash-harness.ts";

interface SessionRow {
  id: string;
  status: string;
  lobby_id: string | null;
  sandbox_connected: boolean;
}

describe("start-planning cut short at every step, then the API restarts", () => {
  let w: World;
  let desktop: FakeDesktop;
  let driver: AgentDriver;
  let crashAt: string | null = null;
  let u: { key: string; taskIds: string[] };

  before(async () => {
    desktop = await startFakeDesktop();
    w = await new World({
      lifecycle: { intervalMs: 100, startingTimeoutMs: 1_500, hostCallTimeoutMs: 2_000 },
      startPlanningFault: (step) => {
        if (step === crashAt) throw new Error(`crash after ${step}`);
      },
    }).start();
    driver = new AgentDriver(new URL(desktop.url).host);
    await w.startHost("crashy", { driver, maxSandboxes: 20 });
    u = await w.user("dana", 12);
  });
  after(async () => {
    await driver.destroy();
    await w.close();
    await desktop.close();
  });

  const task = async (id: string) =>
    (await w.call<{ status: string }>("GET", `/api/v1/spec-tasks/${id}`, u.key)).body.status;
  const sessionsOf = async (taskId: string) =>
    (await w.server.store.sessions.list({ specTaskId: taskId })).map((s) => ({ id: s.id, status: s.status }));
  const session = async (id: string) =>
    (await w.call<SessionRow>("GET", `/api/v1/sessions/${id}`, u.key)).body;
  const hostCount = async () =>
    (
      await w.call<{ id: string; connected_sandboxes: number }[]>("GET", "/api/v1/wolf-instances", w.adminKey)
    ).body.find((h) => h.id === "crashy")?.connected_sandboxes;
  /** Host counts equal what the host runs, at the end of a settled state. */
  const countsAgree = async () => (await hostCount()) === driver.list().length;

  async function crashAndRestart(taskId: string, step: string): Promise<string> {
    crashAt = step;
    const res = await w.startPlanning(u.key, taskId);
    crashAt = null;
    assert.equal(res.status, 500, `the start is cut short after ${step}`);
    const [left] = await sessionsOf(taskId);
    // Once the lobby exists, its sandbox may dial in before the cut: starting or running.
    assert.match(left?.status ?? "", /^(starting|running)$/, `after ${step} the session is left live`);
    assert.equal(await task(taskId), "planning");
    await w.server.close();
    await w.startServer();
    await w.until(() => w.server.registry.isConnected("wolf-crashy"), "host back", 20_000);
    return left.id;
  }

  for (const [i, step] of START_PLANNING_STEPS.entries()) {
    const lobbyMade = step === "lobby" || step === "recorded";
    it(`after step "${step}": ${lobbyMade ? "the sandbox comes, the session runs" : "the session fails, the task starts again"}`, async () => {
      const taskId = u.taskIds[i];
      const id = await crashAndRestart(taskId, step);
      if (lobbyMade) {
        await w.until(async () => (await session(id)).status === "running", `${step}: session running`);
        await w.until(async () => (await session(id)).lobby_id !== null, `${step}: lobby recorded`);
        assert.equal(await task(taskId), "planning", "the task is held by its running session");
      } else {
        await w.until(async () => (await session(id)).status === "failed", `${step}: session failed`);
        await w.until(async () => (await task(taskId)) === "backlog", `${step}: task back in backlog`);
        assert.equal(driver.list().filter((l) => l.sessionId === id).length, 0, "no lobby left");
        const again = await w.startPlanning(u.key, taskId);
        assert.equal(again.status, 200, JSON.stringify(again.body));
        assert.notEqual(again.body.session_id, id);
        await w.until(
          async () => (await session(again.body.session_id)).status === "running",
          "restart runs",
        );
      }
      await w.until(countsAgree, "host count equals the lobbies it runs");
      const active = (await sessionsOf(taskId)).filter(
        (s) => s.status === "starting" || s.status === "running",
      );
      assert.equal(active.length, 1, "exactly one live session for the task");
    });
  }

  it("a second start-planning resumes the session a crash left starting: same session, one lobby", async () => {
    const taskId = u.taskIds[4];
    crashAt = "key";
    assert.equal((await w.startPlanning(u.key, taskId)).status, 500);
    crashAt = null;
    const [left] = await sessionsOf(taskId);
    const again = await w.startPlanning(u.key, taskId);
    assert.equal(again.status, 200, JSON.stringify(again.body));
    assert.equal(again.body.session_id, left.id);
    assert.equal(again.body.task.status, "planning");
    await w.until(async () => (await session(left.id)).status === "running", "resumed session running");
    assert.equal(driver.list().filter((l) => l.sessionId === left.id).length, 1, "one lobby");
    const third = await w.startPlanning(u.key, taskId);
    assert.equal(third.body.session_id, left.id, "a running session is returned too");
    assert.equal((await sessionsOf(taskId)).length, 1, "never a second session");
    await w.until(countsAgree, "host count equals the lobbies it runs");
  });

  it("a lobby lost while the API was down: the running session is stopped, its slot freed", async () => {
    const taskId = u.taskIds[5];
    const res = await w.startPlanning(u.key, taskId);
    const id = res.body.session_id;
    await w.until(async () => (await session(id)).status === "running", "running");
    await w.server.close();
    await driver.kill(driver.list().find((l) => l.sessionId === id)!.lobbyId);
    await w.startServer();
    await w.until(async () => (await session(id)).status === "stopped", "session stopped");
    await w.until(async () => (await task(taskId)) === "backlog", "task back in backlog");
    await w.until(countsAgree, "host count equals the lobbies it runs");
  });

  it("a task left in planning with no session at all goes back to backlog", async () => {
    const taskId = u.taskIds[6];
    assert.ok(await w.server.store.specTasks.setStatus(taskId, "planning", ["backlog"]));
    await w.until(async () => (await task(taskId)) === "backlog", "task back in backlog");
    const res = await w.startPlanning(u.key, taskId);
    assert.equal(res.status, 200);
  });

  it("a sandbox that never dials in: its session fails within the bound, its lobby is stopped", async () => {
    const taskId = u.taskIds[7];
    driver.refuseAgents = true;
    const res = await w.startPlanning(u.key, taskId);
    driver.refuseAgents = false;
    assert.equal(res.status, 200);
    const id = res.body.session_id;
    assert.equal((await session(id)).status, "starting");
    await w.until(async () => (await session(id)).status === "failed", "session failed");
    await w.until(async () => (await task(taskId)) === "backlog", "task back in backlog");
    await w.until(() => !driver.list().some((l) => l.sessionId === id), "lobby stopped");
    await w.until(countsAgree, "host count equals the lobbies it runs");
  });
});

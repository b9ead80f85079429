// `revdial spectask cleanup` as a user runs it, against a real server and a real host (in-memory
// sandboxes): --older-than picks exactly the older sessions, --dry-run changes nothing, a user's
// cleanup never reaches another user's sessions, and an admin's --all-users does. An out-of-range
// duration (`--older-than 99999999999999d`, once a 500) is a 400 with the documented error shape
// from the API, and a clear usage error from the CLI.

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { MemoryDriver, World } from "../host/host-harness.ts";
import { revdial } from "./cli-harness.ts";

describe("spectask cleanup", () => {
  let w: World;
  let u: { key: string; taskIds: string[] };
  let other: { key: string; taskIds: string[] };
  let older: string[];
  let newer: string;
  let othersSession: string;
  let middle: number;
  const GAP_MS = 4_000;
  /** --older-than for a cut-off in the middle of the gap. */
  const olderThan = () => `${Date.now() - middle}ms`;
  const as = (key: string) => ({ REVDIAL_URL: w.url, REVDIAL_API_KEY: key });
  const status = async (id: string) =>
    (await w.call<{ status: string }>("GET", `/api/v1/sessions/${id}`, w.adminKey)).body.status;

  before(async () => {
    w = await new World().start();
    await w.startHost("mem", { driver: new MemoryDriver(), maxSandboxes: 10 });
    u = await w.user("erin", 4);
    other = await w.user("frank", 1);
    older = [];
    for (const t of u.taskIds.slice(0, 2)) older.push((await w.startPlanning(u.key, t)).body.session_id);
    othersSession = (await w.startPlanning(other.key, other.taskIds[0])).body.session_id;
    // Let GAP_MS pass (a deadline, polled) between the older sessions and the newer one; each
    // --older-than below puts its cut-off in the middle of that gap as of when the command is
    // started, so the CLI's own start-up time (under GAP_MS / 2) cannot move it past either side.
    const cut = Date.now() + GAP_MS;
    await w.until(() => Date.now() >= cut, "time to pass");
    middle = cut - GAP_MS / 2;
    newer = (await w.startPlanning(u.key, u.taskIds[2])).body.session_id;
  });
  after(async () => {
    await w.close();
  });

  it("--dry-run lists exactly the older sessions and changes nothing", async () => {
    const run = await revdial(["spectask", "cleanup", "--older-than", olderThan(), "--dry-run"], as(u.key));
    assert.equal(run.code, 0, run.stderr);
    for (const id of older) assert.match(run.stdout, new RegExp(`^Would stop ${id} `, "m"));
    assert.doesNotMatch(run.stdout, new RegExp(newer));
    assert.doesNotMatch(run.stdout, new RegExp(othersSession));
    assert.match(run.stdout, /^Dry run: 2 session\(s\) would be stopped$/m);
    for (const id of [...older, newer]) assert.equal(await status(id), "starting");
  });

  it("--older-than stops exactly the older sessions of the caller", async () => {
    const run = await revdial(["spectask", "cleanup", "--older-than", olderThan()], as(u.key));
    assert.equal(run.code, 0, run.stderr);
    assert.match(run.stdout, /^Stopped 2 session\(s\)$/m);
    for (const id of older) assert.equal(await status(id), "stopped");
    assert.equal(await status(newer), "starting");
    assert.equal(await status(othersSession), "starting", "another user's session is untouched");
  });

  it("an out-of-range duration is a 400 with the error shape (API) and a usage error (CLI)", async () => {
    for (const value of ["99999999999999d", "1e9d", "99999999999999999999999ms", "36501d"]) {
      const res = await w.call<{ error: { code: string; message: string } }>(
        "GET",
        `/api/v1/sessions?older_than=${encodeURIComponent(value)}`,
        u.key,
      );
      assert.equal(res.status, 400, `${value}: ${JSON.stringify(res.body)}`);
      assert.deepEqual(Object.keys(res.body), ["error"]);
      assert.equal(res.body.error.code, "RD_ERR_INVALID_DURATION");
      assert.match(res.body.error.message, new RegExp(value));
    }
    const inRange = await w.call("GET", "/api/v1/sessions?older_than=36500d", u.key);
    assert.equal(inRange.status, 200, "100 years is the bound, still accepted");
    const run = await revdial(["spectask", "cleanup", "--older-than", "99999999999999d"], as(u.key));
    assert.notEqual(run.code, 0);
    assert.match(run.stderr, /--older-than: duration "99999999999999d" is out of range \(at most 36500d\)/);
    assert.doesNotMatch(run.stderr, /\n\s+at /, "a message, not a stack");
    assert.equal(await status(newer), "starting", "nothing stopped");
  });

  it("usage: exactly one of --all, --older-than, SESSION_ID", async () => {
    const run = await revdial(["spectask", "cleanup", "--all", "--older-than", "1s"], as(u.key));
    assert.equal(run.code, 2);
    assert.match(run.stderr, /exactly one of/);
  });

  it("a user cannot stop another user's session by id; admin --all --all-users stops everyone's", async () => {
    const denied = await revdial(["spectask", "stop", othersSession], as(u.key));
    assert.equal(denied.code, 1);
    assert.match(denied.stderr, /not found/);
    assert.equal(await status(othersSession), "starting");
    const run = await revdial(["spectask", "cleanup", "--all", "--all-users"], as(w.adminKey));
    assert.equal(run.code, 0, run.stderr);
    assert.match(run.stdout, /^Stopped 2 session\(s\)$/m);
    assert.equal(await status(othersSession), "stopped");
    assert.equal(await status(newer), "stopped");
  });
});

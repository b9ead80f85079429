// The CLI's table and record formatting, on strings.

import assert from "node:assert/strict";
import { it } from "node:test";
import { defaultScreenshotName } from "../../src/cli/commands/spectask.ts";
import { formatRecord, formatTable } from "../../src/cli/output.ts";

it("aligns columns to the widest cell and shows null as -", () => {
  const rows = [
    { id: "a", name: "short", extra: null },
    { id: "longer-id", name: "n", extra: 3 },
  ];
  const text = formatTable(rows, [
    { header: "id", value: (r) => r.id },
    { header: "name", value: (r) => r.name },
    { header: "extra", value: (r) => r.extra },
  ]);
  assert.equal(text, "ID         NAME   EXTRA\na          short  -\nlonger-id  n      3\n");
});

it("prints a record as aligned key: value lines", () => {
  assert.equal(formatRecord({ id: "x", status: null }), "id:     x\nstatus: -\n");
});

it("names a screenshot screenshot-YYYYMMDD-HHMMSS.ext in local time", () => {
  assert.equal(defaultScreenshotName(new Date(2025, 0, 2, 3, 4, 5), "png"), "screenshot-20250102-030405.png");
});

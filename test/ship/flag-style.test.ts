// The one-file agent's flag style: `revdial agent`'s unless the program is named revdial-client,
// the first argument says `client`, or the first flag is the seed's single-dash long form.

import assert from "node:assert/strict";
import { it } from "node:test";
import { pickFlagStyle } from "../../src/cli/revdial-agent.ts";

it("picks the flag style from the first argument, the program's name, or the flags", () => {
  const cases: [string, string[], string, string[]][] = [
    ["revdial-agent", ["--server", "u"], "agent", ["--server", "u"]],
    ["revdial-agent", ["agent", "-server", "u"], "agent", ["-server", "u"]],
    ["revdial-agent", ["client", "--server", "u"], "client", ["--server", "u"]],
    ["revdial-agent", ["revdial-client", "-server", "u"], "client", ["-server", "u"]],
    ["revdial-client", ["--server", "u"], "client", ["--server", "u"]],
    ["revdial-client.mjs", ["-server", "u"], "client", ["-server", "u"]],
    ["revdial-agent", ["-server", "u", "-runner-id", "r"], "client", ["-server", "u", "-runner-id", "r"]],
    ["revdial-agent", ["-server=u"], "client", ["-server=u"]],
    ["revdial-agent", ["-h"], "agent", ["-h"]],
    ["revdial-agent", [], "agent", []],
  ];
  for (const [name, args, style, rest] of cases)
    assert.deepEqual(pickFlagStyle(name, args), { style, args: rest }, `${name} ${args.join(" ")}`);
});

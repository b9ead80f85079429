// What a non-101 answer to a tunnel handshake means (src/tunnel/upgrade-diagnosis.ts), on the bytes
// an agent or `revdial doctor` receives: the API's 426 for a handshake that lost its Upgrade header
// names the stripping proxy; the endpoint's own refusals are passed on as they are; an answer with
// no revdial error code (a proxy's 502 page, a 200) is blamed on what stands in front of the API.

import assert from "node:assert/strict";
import { test } from "node:test";
import {
  diagnoseUpgradeAnswer,
  UPGRADE_STRIPPED_CODE,
  UPGRADE_STRIPPED_SERVER_MESSAGE,
} from "../../src/tunnel/upgrade-diagnosis.ts";

const body = (code: string, message: string) => JSON.stringify({ error: { code, message } });

test("the API's 426 for a plain GET on the tunnel path: a proxy strips the Upgrade headers", () => {
  const d = diagnoseUpgradeAnswer({
    status: 426,
    body: body(UPGRADE_STRIPPED_CODE, UPGRADE_STRIPPED_SERVER_MESSAGE),
  });
  assert.equal(d.verdict, "stripped");
  assert.equal(d.code, UPGRADE_STRIPPED_CODE);
  assert.match(
    d.problem,
    /^HTTP 426: a proxy between here and the server strips the Upgrade and Connection headers/,
  );
  assert.match(
    d.fix,
    /proxy_set_header Upgrade \$http_upgrade; proxy_set_header Connection \$connection_upgrade/,
  );
  assert.equal(d.message, `${d.problem}; ${d.fix}`);
});

test("the endpoint's own refusals are the endpoint's: no proxy blamed, no fix added", () => {
  for (const [status, code] of [
    [400, "RD_ERR_TUNNEL_INVALID_RUNNER_ID"],
    [401, "RD_ERR_AUTH_REQUIRED"],
    [429, "RD_ERR_TUNNEL_LIMIT"],
  ] as const) {
    const d = diagnoseUpgradeAnswer({ status, body: body(code, "refused") });
    assert.equal(d.verdict, "endpoint", code);
    assert.equal(d.code, code);
    assert.equal(d.message, `HTTP ${status}: refused`);
    assert.equal(d.fix, "");
  }
});

test("answers without a revdial error code came from something in front of the API", () => {
  for (const [status, text] of [
    [502, "<html><body><h1>502 Bad Gateway</h1></body></html>"],
    [200, "welcome"],
    [400, '{"message":"bad request"}'],
    [404, ""],
  ] as const) {
    const d = diagnoseUpgradeAnswer({ status, body: text });
    assert.equal(d.verdict, "foreign", `${status} ${text}`);
    assert.equal(d.code, null);
    assert.match(d.problem, new RegExp(`^HTTP ${status}`));
    assert.match(d.problem, /strips the Upgrade headers or does not pass upgrades/);
    assert.match(d.fix, /docs\/reverse-proxy\.md/);
  }
});

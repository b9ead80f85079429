// What a non-101 answer to a tunnel handshake means, for the agent's log and `revdial doctor`. A
// handshake is an HTTP/1.1 request with `Connection: Upgrade` and `Upgrade: websocket` (or
// `revdial.h2`). A reverse proxy that does not forward those two headers (they are hop-by-hop, so
// nginx drops them unless told otherwise) turns it into a plain GET: the upgrade never happens and
// the agent sees an ordinary answer. This was the seed's unexplained `GET /revdial 502`.
//
// Three cases, told apart by the body, because only the tunnel endpoint writes revdial's JSON:
//   - `RD_ERR_TUNNEL_UPGRADE_STRIPPED`: the API itself saw the handshake arrive without its
//     Upgrade header (a plain GET on the tunnel path), so a proxy in between stripped it;
//   - any other `{"error":{"code":"RD_ERR_…"}}`: the endpoint's own refusal (bad runner id, token,
//     limit): the upgrade reached it, nothing in between is at fault;
//   - anything else (a 200 page, a proxy's 400 or 502): something in front of the API answered; a
//     proxy that strips or refuses upgrades is the usual cause.

/** The code the API answers a plain GET on the tunnel path with (HTTP 426). */
export const UPGRADE_STRIPPED_CODE = "RD_ERR_TUNNEL_UPGRADE_STRIPPED";

/** Where the fix is written down. */
export const REVERSE_PROXY_DOC = "docs/reverse-proxy.md";

/** What to change in a proxy that strips the headers (nginx's spelling; HAProxy passes them). */
export const UPGRADE_FIX =
  "forward them (nginx: proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; " +
  `proxy_set_header Connection $connection_upgrade; see ${REVERSE_PROXY_DOC})`;

/** The API's message for a plain GET on the tunnel path (the 426 body). */
export const UPGRADE_STRIPPED_SERVER_MESSAGE =
  "the tunnel handshake arrived without its Upgrade header: a proxy in between strips the Upgrade " +
  `and Connection headers; ${UPGRADE_FIX}`;

export type UpgradeVerdict = "stripped" | "endpoint" | "foreign";

export interface UpgradeDiagnosis {
  verdict: UpgradeVerdict;
  /** The endpoint's error code, for `stripped` and `endpoint`. */
  code: string | null;
  /** What happened. */
  problem: string;
  /** What to change; empty for the endpoint's own refusals (their message says it). */
  fix: string;
  /** `problem; fix`: one sentence a user can act on, for a log line. */
  message: string;
}

export interface UpgradeAnswer {
  status: number;
  /** The answer's body as text (the first few KiB are enough). */
  body: string;
}

/** Classifies a non-101 answer to a tunnel handshake. Never throws. */
export function diagnoseUpgradeAnswer(answer: UpgradeAnswer): UpgradeDiagnosis {
  const error = revdialError(answer.body);
  if (error?.code === UPGRADE_STRIPPED_CODE) {
    return verdict(
      "stripped",
      error.code,
      `HTTP ${answer.status}: a proxy between here and the server strips the Upgrade and Connection ` +
        "headers, so the tunnel handshake reached the API as a plain GET",
      UPGRADE_FIX,
    );
  }
  if (error) return verdict("endpoint", error.code, `HTTP ${answer.status}: ${error.message}`, "");
  const snippet = answer.body.trim().replace(/\s+/g, " ").slice(0, 120);
  return verdict(
    "foreign",
    null,
    `HTTP ${answer.status}${snippet ? ` (${snippet})` : ""} came from something in front of the API, ` +
      "not from the tunnel endpoint: a proxy in between strips the Upgrade headers or does not pass " +
      "upgrades, or does not reach the API",
    UPGRADE_FIX,
  );
}

function verdict(v: UpgradeVerdict, code: string | null, problem: string, fix: string): UpgradeDiagnosis {
  return { verdict: v, code, problem, fix, message: fix ? `${problem}; ${fix}` : problem };
}

function revdialError(body: string): { code: string; message: string } | null {
  try {
    const error = JSON.parse(body)?.error;
    if (typeof error?.code === "string" && error.code.startsWith("RD_ERR_"))
      return { code: error.code, message: String(error.message ?? "") };
  } catch {
    // Not JSON: not written by the API.
  }
  return null;
}

// A tunnel handshake as an attacker sends it (the raw transport's Upgrade, which fetch refuses to
// send): the refusal's status, Retry-After and error body, or 101 when the server accepted it (the
// socket is then closed at once).

import http from "node:http";

interface ErrorBody {
  error: { code: string; message: string };
}

/** A raw-transport tunnel handshake: the refusal's status, Retry-After and body, or `accepted`. */
export function handshake(
  serverUrl: string,
  runnerId: string,
  token: string,
): Promise<{ status: number; retryAfter: string | null; body: ErrorBody | null }> {
  return new Promise((resolve, reject) => {
    const req = http.request(`${serverUrl}/api/v1/revdial?runnerid=${encodeURIComponent(runnerId)}`, {
      headers: { authorization: `Bearer ${token}`, connection: "Upgrade", upgrade: "revdial.h2" },
    });
    req.on("response", async (res) => {
      let text = "";
      for await (const chunk of res) text += chunk;
      const retryAfter = (res.headers["retry-after"] as string | undefined) ?? null;
      resolve({ status: res.statusCode ?? 0, retryAfter, body: JSON.parse(text) as ErrorBody });
    });
    req.on("upgrade", (_res, socket) => {
      socket.destroy();
      resolve({ status: 101, retryAfter: null, body: null });
    });
    req.on("error", reject);
    req.end();
  });
}

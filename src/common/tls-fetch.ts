// A fetch for HTTPS with our own trust settings (a private CA, or --insecure). Node's global fetch
// takes no CA; its dispatcher type lives in undici, which is not a dependency. So this one request
// goes through node:https and comes back as a standard Response, the same shape the API client
// reads from fetch.

import https from "node:https";
import { Readable } from "node:stream";
import type { ClientTls } from "./tls.ts";

export interface TlsFetchInit {
  method: string;
  headers: Record<string, string>;
  body?: string;
  signal?: AbortSignal;
}

/** Statuses whose Response must have a null body. */
const NO_BODY = new Set([101, 103, 204, 205, 304]);

export function fetchWithTls(url: string, init: TlsFetchInit, tls: ClientTls): Promise<Response> {
  return new Promise((resolve, reject) => {
    const req = https.request(
      url,
      {
        method: init.method,
        headers: init.headers,
        signal: init.signal,
        ca: tls.ca,
        rejectUnauthorized: tls.rejectUnauthorized,
        // A private agent: a pooled socket verified under other settings must not be reused.
        agent: false,
      },
      (res) => {
        const headers = new Headers();
        for (let i = 0; i + 1 < res.rawHeaders.length; i += 2)
          headers.append(res.rawHeaders[i], res.rawHeaders[i + 1]);
        const status = res.statusCode ?? 502;
        const empty = NO_BODY.has(status) || init.method === "HEAD";
        if (empty) res.resume();
        const body = empty ? null : (Readable.toWeb(res) as ReadableStream<Uint8Array>);
        resolve(new Response(body, { status, statusText: res.statusMessage, headers }));
      },
    );
    req.once("error", reject);
    req.end(init.body);
  });
}

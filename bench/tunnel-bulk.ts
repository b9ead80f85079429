// One 64 MiB GET per run, with curl as the reader, interleaved across paths: direct, then each tunnel,
// then direct again, N rounds. Direct's large-body speed swings between 1.5 and 6 GB/s from one minute
// to the next on this machine, so a tunnel's figure is the median of its runs over the median of
// direct's, taken in the same minutes: never one run against another taken earlier.

import { execFile } from "node:child_process";
import type { Report } from "./tunnel-figures.ts";
import type { Path } from "./tunnel-paths.ts";

export const BIG_BYTES = 64 * 1024 * 1024;
/** curl's deadline for one body: at 20 MB/s, a slow tunnel still finishes. */
const CURL_TIMEOUT_S = 60;

export interface BulkRun {
  /** Bytes per second of the body (curl's speed_download). */
  speed: number;
  /** Seconds from curl's start to the first byte, and to the end. */
  firstByte: number;
  total: number;
  /** performance.now() when curl had exited. */
  exitedAt: number;
  /** Null when the body came whole with a 200; else what went wrong. */
  error: string | null;
}

/** One GET of {path.base}/big with curl, to /dev/null. Never rejects: a failure sets `error`. */
export function curlBig(path: Path): Promise<BulkRun> {
  const args = ["-s", "-o", "/dev/null", "--max-time", String(CURL_TIMEOUT_S)];
  args.push("-w", "%{http_code} %{size_download} %{speed_download} %{time_starttransfer} %{time_total}");
  for (const [k, v] of Object.entries(path.headers)) args.push("-H", `${k}: ${v}`);
  return new Promise((resolve) => {
    execFile("curl", [...args, `${path.base}/big`], (err, stdout) => {
      const exitedAt = performance.now();
      const [status, size, speed, firstByte, total] = stdout.trim().split(" ").map(Number);
      const error = err
        ? `curl: ${err.message.split("\n")[0]}`
        : status !== 200 || size !== BIG_BYTES
          ? `status ${status}, ${size} bytes`
          : null;
      resolve({ speed, firstByte, total, exitedAt, error });
    });
  });
}

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/** `runs` rounds of direct, tunnel, tunnel…; records each path's median and its ratio to direct's. */
export async function reportBulk(paths: Path[], runs: number, report: Report): Promise<void> {
  console.log(
    `one 64 MiB GET (curl), ${runs} runs per path interleaved with direct; median, ratio of medians`,
  );
  const speeds = new Map<Path, number[]>(paths.map((p) => [p, []]));
  const errors = new Map<Path, string>();
  for (let round = 0; round < runs; round++) {
    for (const path of paths) {
      const r = await curlBig(path);
      if (r.error) errors.set(path, r.error);
      else speeds.get(path)?.push(r.speed / 1e6);
    }
  }
  const direct = median(speeds.get(paths[0]) ?? []);
  for (const [path, mbps] of speeds) {
    const m = mbps.length > 0 ? median(mbps) : Number.NaN;
    const isDirect = path.kind === "direct";
    const runsText = mbps.map((x) => x.toFixed(0)).join(" ");
    const failed = errors.has(path) ? `; ${runs - mbps.length} failed: ${errors.get(path)}` : "";
    report.add({
      figure: `64 MiB GET, ${path.transport ?? "direct"}`,
      path: path.name,
      value: isDirect ? m : m / direct,
      unit: isDirect ? "MB/s" : "x direct",
      bar: path.kind !== "tunnel" ? null : path.transport === "raw" ? "bulkRaw" : "bulkWs",
      detail: { median_mb_s: m, runs_mb_s: mbps, failed: runs - mbps.length },
      note: `${isDirect ? "" : `${m.toFixed(0)} MB/s; `}runs ${runsText} MB/s${failed}`,
    });
  }
  console.log("");
}

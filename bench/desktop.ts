// Benchmark for the desktop service's screenshot speed bar (issue 4): a 1920x1080 PNG in under 150 ms,
// measured end to end over HTTP. Starts its own Xvfb (1920x1080x24, free display) with a full-screen
// xlogo window on it, starts the service on a free port, takes 20 PNG and 20 JPEG screenshots in a row
// and prints the median and p95 of each. Run with `npm run bench -- desktop` or `node bench/desktop.ts`.

import { createDesktopService } from "../src/agent/desktop/desktop-service.ts";
import { missingTools, startXvfb } from "../test/agent/desktop/xvfb.ts";

const WIDTH = 1920;
const HEIGHT = 1080;
const SHOTS = 20;
const BAR_MS = 150;

export async function main(args: string[] = []): Promise<void> {
  const shots = Number(args.find((arg) => arg.startsWith("--shots="))?.slice(8) ?? SHOTS);
  const missing = missingTools("Xvfb", "xlogo");
  if (missing) {
    console.log(`desktop bench ${missing}`);
    return;
  }
  const xvfb = await startXvfb({ width: WIDTH, height: HEIGHT });
  const service = createDesktopService({ listen: "127.0.0.1:0", env: xvfb.env });
  try {
    await xvfb.window([0xd0, 0x40, 0x20], { x: 0, y: 0, width: WIDTH, height: HEIGHT });
    const base = `http://127.0.0.1:${(await service.listen()).port}`;
    await screenshot(`${base}/screenshot`); // warm-up: X connection, sharp's first use
    const png = await measure(`${base}/screenshot?format=png`, shots);
    const jpeg = await measure(`${base}/screenshot?format=jpeg&quality=80`, shots);
    report(`PNG  ${WIDTH}x${HEIGHT}`, png);
    report(`JPEG ${WIDTH}x${HEIGHT}`, jpeg);
    const met = percentile(png.ms, 50) < BAR_MS;
    console.log(`speed bar (median PNG < ${BAR_MS} ms): ${met ? "met" : "NOT met"}`);
    if (!met) process.exitCode = 1;
  } finally {
    await service.close();
    await xvfb.close();
  }
}

interface Samples {
  ms: number[];
  bytes: number;
}

async function measure(url: string, count: number): Promise<Samples> {
  const ms: number[] = [];
  let bytes = 0;
  for (let i = 0; i < count; i++) {
    const started = performance.now();
    bytes = await screenshot(url);
    ms.push(performance.now() - started);
  }
  return { ms, bytes };
}

async function screenshot(url: string): Promise<number> {
  const res = await fetch(url);
  if (res.status !== 200) throw new Error(`${url}: ${res.status} ${await res.text()}`);
  return (await res.arrayBuffer()).byteLength;
}

function report(label: string, samples: Samples): void {
  const median = percentile(samples.ms, 50).toFixed(1);
  const p95 = percentile(samples.ms, 95).toFixed(1);
  console.log(
    `${label}: median ${median} ms, p95 ${p95} ms, ${samples.ms.length} shots, ${samples.bytes} bytes`,
  );
}

function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

if (import.meta.main) await main(process.argv.slice(2));

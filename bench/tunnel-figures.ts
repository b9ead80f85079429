// The hot-path issue's bars, and the record of one run's figures: every figure the tunnel benchmark
// takes is added here once, printed at once under its section (so a long run shows progress), and
// again in the summary block at the end, each with its bar, its goal and whether they are met.
// `--json FILE` writes the same records.
//
// The bars live here and nowhere else: a figure names its bar by key, so changing a bar is one line.

import { writeFileSync } from "node:fs";

export interface Bar {
  /** Which way is better. */
  better: "higher" | "lower";
  bar: number;
  goal: number;
  unit: string;
}

/** The table. Ratios are to `direct` (the target without the tunnel) in the same run. */
export const BARS = Object.freeze({
  reqRatio: { better: "higher", bar: 0.25, goal: 0.4, unit: "x direct" },
  seqP50: { better: "lower", bar: 0.3, goal: 0.2, unit: "ms" },
  bulkRaw: { better: "higher", bar: 0.2, goal: 0.25, unit: "x direct" },
  bulkWs: { better: "higher", bar: 0.15, goal: 0.25, unit: "x direct" },
  holP50: { better: "lower", bar: 2, goal: 1, unit: "ms" },
  cpuApi: { better: "lower", bar: 60, goal: 35, unit: "us" },
  cpuAgent: { better: "lower", bar: 30, goal: 20, unit: "us" },
  idleMemory: { better: "lower", bar: 24, goal: 16, unit: "KB" },
  v1VsGo: { better: "higher", bar: 1, goal: 2, unit: "x Go" },
} satisfies Record<string, Bar>);

export type BarName = keyof typeof BARS;

export interface Figure {
  /** What is measured, e.g. "req/s at 32 connections". */
  figure: string;
  /** Which path: "v2 ws", "direct", "v1 hijack"… */
  path: string;
  /** Printed after the path in the section's row, where one path has several figures ("API"). */
  label?: string;
  /** The figure the bar applies to; null when it could not be taken (see note). */
  value: number | null;
  unit: string;
  bar: BarName | null;
  /** Figures behind the value (raw req/s, p99, runs…), for the JSON and the detail line. */
  detail?: Record<string, unknown>;
  note?: string;
}

export type Verdict = "met" | "NOT met" | "n/a";

export function verdict(value: number | null, bar: BarName | null, which: "bar" | "goal"): Verdict {
  if (value === null || bar === null || !Number.isFinite(value)) return "n/a";
  const b = BARS[bar];
  const limit = b[which];
  return (b.better === "higher" ? value >= limit : value <= limit) ? "met" : "NOT met";
}

function barText(bar: BarName, which: "bar" | "goal"): string {
  const b = BARS[bar];
  return `${b.better === "higher" ? ">=" : "<="} ${b[which]} ${b.unit}`;
}

/** The bar and goal of a figure, as its row shows them: `bar <= 0.3 ms: met (goal <= 0.2 ms: NOT met)`. */
export function judgement(value: number | null, bar: BarName | null): string {
  if (bar === null) return "";
  return `bar ${barText(bar, "bar")}: ${verdict(value, bar, "bar")} (goal ${barText(bar, "goal")}: ${verdict(value, bar, "goal")})`;
}

export function formatValue(value: number | null, unit: string): string {
  if (value === null || !Number.isFinite(value)) return "-";
  const digits = unit === "ms" || unit.startsWith("x") ? 3 : Math.abs(value) >= 100 ? 0 : 1;
  return `${value.toFixed(digits)} ${unit}`;
}

/** One run's figures, in the order they were taken. Not shared between runs. */
export class Report {
  readonly #figures: Figure[] = [];
  readonly #skipped: string[] = [];

  /** Records a figure and prints its row: path, value, bar and goal. */
  add(figure: Figure): void {
    this.#figures.push(figure);
    const note = figure.note ? `   (${figure.note})` : "";
    const name = figure.label ? `${figure.path} ${figure.label}` : figure.path;
    console.log(
      `  ${name.padEnd(16)} ${formatValue(figure.value, figure.unit).padStart(14)}   ${judgement(figure.value, figure.bar)}${note}`,
    );
  }

  /** Something the run could not do, said when it happens and again in the summary. */
  skip(message: string): void {
    this.#skipped.push(message);
    console.log(`  ${message}`);
  }

  get figures(): readonly Figure[] {
    return this.#figures;
  }

  /** Every figure that has a bar, one line each, then what was skipped. */
  printSummary(): void {
    console.log("summary: every figure with its bar (ratios are to direct in this run)");
    const rows = this.#figures.filter((f) => f.bar !== null);
    const width = Math.max(6, ...rows.map((f) => f.figure.length));
    for (const f of rows) {
      const bar = f.bar as BarName;
      console.log(
        `  ${f.figure.padEnd(width)}  ${f.path.padEnd(12)} ${formatValue(f.value, f.unit).padStart(14)}   ` +
          `bar ${barText(bar, "bar").padEnd(16)} ${verdict(f.value, bar, "bar").padEnd(8)} ` +
          `goal ${barText(bar, "goal").padEnd(16)} ${verdict(f.value, bar, "goal")}`,
      );
    }
    if (this.#skipped.length > 0) console.log("not measured:");
    for (const s of this.#skipped) console.log(`  ${s}`);
  }

  /** Writes the figures (with their verdicts), what was skipped, and `meta`, as JSON. */
  writeJson(file: string, meta: Record<string, unknown>): void {
    const figures = this.#figures.map((f) => ({
      ...f,
      bar: f.bar ? { name: f.bar, ...BARS[f.bar] } : null,
      met: verdict(f.value, f.bar, "bar"),
      goal_met: verdict(f.value, f.bar, "goal"),
    }));
    writeFileSync(file, `${JSON.stringify({ ...meta, figures, skipped: this.#skipped }, null, 2)}\n`);
  }
}

// CPU time of one process, read from /proc/PID/stat (utime + stime: every thread of the process,
// user and kernel), for the "CPU per call" figures: read before and after a load run, divided by the
// requests the run completed. Linux only; elsewhere every reading is null and the figure says so.
//
// Why not process.cpuUsage() or a wrapper's figures: the process measured must be the one that runs
// the server or the agent, not npm or a shell in front of it; commandLine() lets the caller check.

import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";

/** Clock ticks per second of utime/stime (sysconf(_SC_CLK_TCK)); 100 when getconf is missing. */
const CLOCK_TICKS_PER_SECOND = clockTicks();

function clockTicks(): number {
  try {
    const n = Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim());
    return Number.isInteger(n) && n > 0 ? n : 100;
  } catch {
    return 100;
  }
}

/** utime + stime of `pid` in microseconds, or null when it cannot be read (gone, not Linux). */
export function cpuMicros(pid: number | null): number | null {
  if (pid === null) return null;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const ticks = Number(fields[11]) + Number(fields[12]); // fields 14 and 15 of proc(5)
    return (ticks / CLOCK_TICKS_PER_SECOND) * 1e6;
  } catch {
    return null;
  }
}

/** The process's argv as one line (for the report: which process was measured), or null. */
export function commandLine(pid: number | null): string | null {
  if (pid === null) return null;
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").filter(Boolean).join(" ");
  } catch {
    return null;
  }
}

/** CPU of a set of processes over one run: start() reads them, perCall(n) divides the growth by n. */
export class CpuMeter {
  readonly #pids: ReadonlyArray<number | null>;
  readonly #before: Array<number | null>;

  constructor(pids: ReadonlyArray<number | null>) {
    this.#pids = pids;
    this.#before = pids.map(cpuMicros);
  }

  /** Microseconds of CPU per call for each pid (null where unreadable or no calls). */
  perCall(calls: number): Array<number | null> {
    return this.#pids.map((pid, i) => {
      const before = this.#before[i];
      const after = cpuMicros(pid);
      if (before === null || after === null || calls <= 0) return null;
      return (after - before) / calls;
    });
  }
}

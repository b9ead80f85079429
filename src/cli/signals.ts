// Clean exits: the first SIGTERM or SIGINT runs the command's graceful close and exits 0 (or the
// given status); a second one exits at once (130). A close that outlives `deadlineMs` is stuck: the
// process says so and exits 1 rather than hanging.

import type { Logger } from "../common/logger.ts";

export interface ShutdownOptions {
  /** Longest the graceful close may take before the process exits 1. Default: no bound. */
  deadlineMs?: number;
}

export function onShutdownSignal(
  logger: Logger,
  close: () => Promise<unknown>,
  exitCode = () => 0,
  options: ShutdownOptions = {},
): void {
  let stopping = false;
  const handler = (signal: NodeJS.Signals) => {
    if (stopping) process.exit(130);
    stopping = true;
    logger.info({ signal }, "shutting down");
    if (options.deadlineMs !== undefined) {
      const stuck = setTimeout(() => {
        logger.error({ deadline_ms: options.deadlineMs }, "shutdown did not finish in time; exiting");
        process.exit(1);
      }, options.deadlineMs);
      stuck.unref();
    }
    close().then(
      () => process.exit(exitCode()),
      (err) => {
        logger.error({ err }, "shutdown failed");
        process.exit(1);
      },
    );
  };
  process.once("SIGTERM", handler);
  process.once("SIGINT", handler);
}

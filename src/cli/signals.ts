// Clean exits: the first SIGTERM or SIGINT runs the command's graceful close and exits 0 (or the
// given status); a second one exits at once.

import type { Logger } from "../common/logger.ts";

export function onShutdownSignal(logger: Logger, close: () => Promise<unknown>, exitCode = () => 0): void {
  let stopping = false;
  const handler = (signal: NodeJS.Signals) => {
    if (stopping) process.exit(130);
    stopping = true;
    logger.info({ signal }, "shutting down");
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

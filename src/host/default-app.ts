// What a sandbox's display runs when the operator names no app (`wolf run --app CMD` replaces it):
// a terminal, Debian's xterm, in the sandbox's working folder, titled with the session's task and
// showing the session, its task and its project on its first lines, then a shell. So the first
// screenshot of a new sandbox shows which sandbox it is. The names come from the sandbox's
// environment (REVDIAL_SESSION_ID, REVDIAL_TASK_NAME, REVDIAL_PROJECT_NAME, set by the API) and are
// only ever expanded inside double quotes and printed with printf %s: a task named `$(rm -rf ~)` is
// text on the screen. Every sandbox driver uses this one choice.

import { which } from "./isolation.ts";

/** The program the default app needs on the sandbox's PATH. */
export const DEFAULT_APP_PROGRAM = "xterm";

/** The PATH sandboxes run with. */
const SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin";

const BANNER =
  `printf "revdial sandbox\\n\\n  session  %s\\n  task     %s\\n  project  %s\\n  folder   %s\\n\\n" ` +
  `"$REVDIAL_SESSION_ID" "\${REVDIAL_TASK_NAME:-(none)}" "\${REVDIAL_PROJECT_NAME:-(none)}" "$PWD"; ` +
  "exec /bin/sh -i";

/**
 * The default app's shell command (run by `/bin/sh -c` in the working folder), for a sandbox with
 * a display.
 */
export const DEFAULT_APP_COMMAND =
  `${DEFAULT_APP_PROGRAM} -title "revdial \${REVDIAL_TASK_NAME:-sandbox} (\${REVDIAL_SESSION_ID})" ` +
  `-geometry 100x30+24+24 -fa Monospace -fs 11 -bg '#1e1e2e' -fg '#e0e0e0' -e /bin/sh -c '${BANNER}'`;

/**
 * The app a sandbox runs: the operator's command when given (an empty one runs nothing), else the
 * default terminal when xterm is installed, else nothing (the reason is returned for the log).
 */
export function chooseApp(
  operatorApp: string | null | undefined,
  path = SANDBOX_PATH,
): { command: string | null; note: string | null } {
  if (operatorApp !== undefined && operatorApp !== null)
    return { command: operatorApp.trim() ? operatorApp : null, note: null };
  if (which(DEFAULT_APP_PROGRAM, path)) return { command: DEFAULT_APP_COMMAND, note: null };
  return {
    command: null,
    note: `${DEFAULT_APP_PROGRAM} is not installed (apt-get install xterm): sandboxes' displays stay empty unless --app is given`,
  };
}

// The base of every revdial error. Each failure has its own class with a stable `code`
// (RD_ERR_<AREA>_<WHAT>) that callers match on, a message a user can act on, and the `cause`.
// The API maps codes to HTTP status in one table (src/api/error-status.ts); the CLI prints messages.

export class RevdialError extends Error {
  readonly code: string;

  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/** True when `err` is a RevdialError carrying `code`. */
export function hasCode(err: unknown, code: string): err is RevdialError {
  return err instanceof RevdialError && err.code === code;
}

/** A wrong option given to a constructor: thrown at construction, naming the option. */
export class InvalidOptionError extends RevdialError {
  constructor(option: string, reason: string) {
    super("RD_ERR_INVALID_OPTION", `invalid option ${option}: ${reason}`);
  }
}

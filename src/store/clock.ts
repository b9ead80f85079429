// The store's clock: every timestamp it writes comes from here (not from the database's now()),
// so tests can age rows and "older than" queries agree with the process that asks them.

export type Clock = () => Date;

export const systemClock: Clock = () => new Date();

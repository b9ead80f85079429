// Options that are all positive integers with frozen defaults (limits, intervals): the check every
// such constructor makes, in one place, so a wrong one throws with the option's name.

import { InvalidOptionError } from "./errors.ts";

/** `defaults` overridden by the defined values of `options`; throws on one that is not an integer >= 1. */
export function positiveIntegerOptions<T extends Record<string, number>>(
  defaults: Readonly<T>,
  options: Partial<Record<keyof T, number | undefined>>,
): T {
  const resolved = { ...defaults } as T;
  for (const name of Object.keys(defaults) as (keyof T & string)[]) {
    const value = options[name];
    if (value === undefined) continue;
    if (!Number.isInteger(value) || value < 1)
      throw new InvalidOptionError(name, "must be a positive integer");
    (resolved as Record<string, number>)[name] = value;
  }
  return resolved;
}

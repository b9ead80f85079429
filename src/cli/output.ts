// How commands print: aligned tables for people, --json for programs. Values are shown as they
// are, null as "-", dates as ISO text; nothing is truncated, so a copied id is always whole.

export interface Column<T> {
  header: string;
  value(row: T): unknown;
}

function cell(value: unknown): string {
  if (value === null || value === undefined || value === "") return "-";
  if (value instanceof Date) return value.toISOString();
  return String(value);
}

/** Rows under upper-case headers, columns padded to their widest cell, two spaces apart. */
export function formatTable<T>(rows: readonly T[], columns: readonly Column<T>[]): string {
  const grid = [
    columns.map((c) => c.header.toUpperCase()),
    ...rows.map((r) => columns.map((c) => cell(c.value(r)))),
  ];
  const widths = columns.map((_, i) => Math.max(...grid.map((line) => line[i].length)));
  const lines = grid.map((line) =>
    line
      .map((text, i) => (i === line.length - 1 ? text : text.padEnd(widths[i])))
      .join("  ")
      .trimEnd(),
  );
  return `${lines.join("\n")}\n`;
}

/** `key: value` lines with the keys aligned (one record). */
export function formatRecord(record: Readonly<Record<string, unknown>>): string {
  const keys = Object.keys(record);
  const width = Math.max(0, ...keys.map((k) => k.length));
  return `${keys.map((k) => `${`${k}:`.padEnd(width + 1)} ${cell(record[k])}`).join("\n")}\n`;
}

export function formatJson(value: unknown): string {
  return `${JSON.stringify(value, null, 2)}\n`;
}

/** Writes to standard output (commands print results there; logs and errors go to standard error). */
export function print(text: string): void {
  process.stdout.write(text);
}

/** A listing as a table, or as JSON with --json. */
export function printList<T>(
  rows: readonly T[],
  columns: readonly Column<T>[],
  json: boolean | undefined,
): void {
  if (json) print(formatJson(rows));
  else if (rows.length === 0) print("(none)\n");
  else print(formatTable(rows, columns));
}

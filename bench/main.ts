// `npm run bench -- NAME [args]`: runs bench/NAME.ts. Benchmarks print figures and ratios; they are
// commands, not tests, and assert nothing. A benchmark is a file here whose opening comment says how
// to run it ("npm run bench -- NAME" in backquotes, or the older "Benchmark for"); the other files
// (procs.ts, tunnel-*.ts) are parts of benchmarks, not commands.

import { readdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const available = readdirSync(here)
  .filter((f) => f.endsWith(".ts") && f !== "main.ts")
  .filter((f) => {
    const opening = readFileSync(join(here, f), "utf8").split("\n", 1)[0];
    return (
      opening.startsWith(`// \`npm run bench -- ${f.slice(0, -3)}`) || opening.startsWith("// Benchmark for")
    );
  })
  .map((f) => f.slice(0, -3));

const [name, ...rest] = process.argv.slice(2);
if (!name || !available.includes(name)) {
  process.stderr.write(`usage: npm run bench -- <${available.join("|")}> [args]\n`);
  process.exit(2);
}
const mod = (await import(pathToFileURL(join(here, `${name}.ts`)).href)) as {
  main(args: string[]): Promise<void>;
};
await mod.main(rest);

#!/usr/bin/env node
import { launch } from "./launch.js";

await launch("src/cli/revdial-client.ts", process.argv.slice(2));

#!/usr/bin/env node
import { launch } from "./launch.js";

await launch("cli/revdial-client", process.argv.slice(2));

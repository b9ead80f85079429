#!/usr/bin/env node
import { launch } from "./launch.js";

await launch("cli/main", process.argv.slice(2));

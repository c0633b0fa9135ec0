// The README's TypeScript snippets are pieces of examples/*.ts, which `npm run typecheck` compiles
// against the package's published types: a snippet that drifts from the examples fails here.
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";

import { PACKAGE } from "./support/stack.mjs";

const lines = (text) => text.split("\n").map((line) => line.trim());

test("every ts snippet of the README is a piece of a type-checked example", () => {
  const readme = readFileSync(join(PACKAGE, "README.md"), "utf8");
  const snippets = [...readme.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => lines(m[1].trimEnd()));
  assert.ok(snippets.length >= 8, `found ${snippets.length} snippets`);
  const examples = readdirSync(join(PACKAGE, "examples"))
    .filter((name) => name.endsWith(".ts"))
    .map((name) => lines(readFileSync(join(PACKAGE, "examples", name), "utf8")));
  for (const snippet of snippets) {
    const found = examples.some((example) =>
      example.some((_, start) => snippet.every((line, i) => example[start + i] === line)),
    );
    assert.ok(found, `not in examples/*.ts:\n${snippet.join("\n")}`);
  }
});

test("the package publishes its build, sources, README and nothing else", async () => {
  const { execFileSync } = await import("node:child_process");
  const [packed] = JSON.parse(execFileSync("npm", ["pack", "--dry-run", "--json"], { cwd: PACKAGE, encoding: "utf8" }));
  const files = packed.files.map((f) => f.path).sort();
  for (const needed of ["README.md", "package.json", "dist/index.js", "dist/index.d.ts", "dist/database.types.d.ts", "src/socket.ts"]) {
    assert.ok(files.includes(needed), `${needed} is not published`);
  }
  assert.deepEqual(files.filter((f) => !/^(dist|src)\//.test(f)), ["README.md", "package.json"]);
  const self = await import("@whatsched/client"); // the package by its name, through its exports
  assert.equal(typeof self.createApiClient, "function");
  assert.equal(typeof self.WhatsschedSocket, "function");
});

// The module's size (minified with esbuild, then gzipped) stays under a bound, and the
// TypeScript declarations compile against the documented surface. Both tools come from
// npm into target/node (scripts/test installs them there when missing).
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { gzipSync } from "node:zlib";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "..", "..", "..");
const bin = (name) => {
  const path = join(root, "target", "node", "node_modules", ".bin", name);
  assert.ok(existsSync(path), `${path} is missing: run scripts/test (it installs esbuild and typescript there)`);
  return path;
};
/** Minified + gzipped bytes the module may take (docs/clients.md reports the figure). */
const GZIP_BOUND = 4096;

test(`pingwheel.js is at most ${GZIP_BOUND} bytes minified and gzipped`, () => {
  const minified = execFileSync(bin("esbuild"), [join(here, "..", "pingwheel.js"), "--minify", "--format=esm", "--log-level=warning"]);
  const gzipped = gzipSync(minified, { level: 9 }).length;
  console.log(`pingwheel.js: ${readFileSync(join(here, "..", "pingwheel.js")).length} B source, ${minified.length} B minified, ${gzipped} B minified+gzipped`);
  assert.ok(gzipped <= GZIP_BOUND, `${gzipped} B gzipped`);
});

test("pingwheel.d.ts compiles against the documented surface (tsc --strict)", () => {
  const args = ["--noEmit", "--strict", "--target", "es2022", "--module", "nodenext", "--moduleResolution", "nodenext", "--types", "", join(here, "surface.ts")];
  try {
    execFileSync(bin("tsc"), args, { stdio: "pipe" });
  } catch (error) {
    assert.fail(`tsc failed:\n${error.stdout}${error.stderr}`);
  }
});

// Bundles the sqlite store's thread (src/stores/sqlite/worker.ts and what it imports from
// src/) into native/build/sqlite-thread.mjs, plain JavaScript, so that each store's thread
// starts without registering tsx (a loader thread and a transpile pass per store). Packages
// stay imports. Beside it, sqlite-thread.json lists the source files it was built from with
// their size and mtime: a thread starts from the bundle only while every one is unchanged
// (src/stores/sqlite/thread-entry.ts), from the source through tsx otherwise. Run by
// `npm ci` (postinstall), `npm start` (prestart) and `npm test` (build); it does nothing
// while the bundle is current, and replaces both files by rename, so a commitd starting
// meanwhile (`npm start` in a test while others run) never reads half a file.
import { existsSync, mkdirSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

// An install without the sources (the Dockerfile's dependency stage) has nothing to bundle;
// the image bundles after copying them.
if (!existsSync(new URL('../src/stores/sqlite/worker.ts', import.meta.url))) process.exit(0);
const { BUNDLE, BUNDLE_MANIFEST, currentBundle, PROJECT_ROOT, THREAD_SOURCE } = await import('../src/stores/sqlite/thread-entry.ts');
if (currentBundle()) process.exit(0);

const root = fileURLToPath(PROJECT_ROOT);
const outfile = fileURLToPath(BUNDLE);
mkdirSync(dirname(outfile), { recursive: true });
const result = await build({
  absWorkingDir: root,
  entryPoints: [fileURLToPath(THREAD_SOURCE)],
  outfile,
  bundle: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  packages: 'external',
  metafile: true,
  write: false,
  logLevel: 'warning',
});

const inputs: Record<string, { size: number; mtimeMs: number }> = {};
for (const path of Object.keys(result.metafile.inputs).sort()) {
  const { size, mtimeMs } = statSync(new URL(path, PROJECT_ROOT));
  inputs[path] = { size, mtimeMs };
}
const replace = (file: string, contents: string | Uint8Array) => {
  const temporary = `${file}.${process.pid}.tmp`;
  writeFileSync(temporary, contents);
  renameSync(temporary, file);
};
// The bundle first: a reader that meets it with the previous manifest finds that manifest
// stale (its sources changed) and starts from the source.
replace(outfile, (result.outputFiles as { contents: Uint8Array }[])[0]?.contents as Uint8Array);
replace(fileURLToPath(BUNDLE_MANIFEST), `${JSON.stringify({ inputs }, null, 2)}\n`);

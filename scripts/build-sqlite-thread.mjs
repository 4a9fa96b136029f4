// Bundles the sqlite store's thread (src/stores/sqlite/worker.ts and what it imports from
// src/) into native/build/sqlite-thread.mjs, plain JavaScript, so that each store's thread
// starts without registering tsx (a loader thread and a transpile pass per store). Packages
// stay imports. Beside it, sqlite-thread.json lists the source files it was built from with
// their size and mtime: a thread starts from the bundle only while every one is unchanged
// (src/stores/sqlite/thread-entry.ts), from the source through tsx otherwise. Run by
// `npm ci` (postinstall), `npm start` (prestart) and `npm test` (build); it does nothing
// while the bundle is current, and replaces both files by rename, so a commitd starting
// meanwhile (`npm start` in a test while others run) never reads half a file.
import { existsSync, mkdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const entry = 'src/stores/sqlite/worker.ts';
const outfile = join(root, 'native', 'build', 'sqlite-thread.mjs');
const manifestFile = join(root, 'native', 'build', 'sqlite-thread.json');
// An install without the sources (the Dockerfile's dependency stage) has nothing to bundle;
// the image bundles after copying them.
if (!existsSync(join(root, entry))) process.exit(0);

const current = () => {
  try {
    const files = Object.entries(JSON.parse(readFileSync(manifestFile, 'utf8')).inputs);
    statSync(outfile);
    return files.length > 0 && files.every(([path, built]) => {
      const now = statSync(join(root, path));
      return now.size === built.size && now.mtimeMs === built.mtimeMs;
    });
  } catch {
    return false;
  }
};
if (current()) process.exit(0);

mkdirSync(dirname(outfile), { recursive: true });
const result = await build({
  absWorkingDir: root,
  entryPoints: [entry],
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

const inputs = {};
for (const path of Object.keys(result.metafile.inputs).sort()) {
  const { size, mtimeMs } = statSync(join(root, path));
  inputs[path] = { size, mtimeMs };
}
const replace = (file, contents) => {
  const temporary = `${file}.${process.pid}.tmp`;
  writeFileSync(temporary, contents);
  renameSync(temporary, file);
};
// The bundle first: a reader that meets it with the previous manifest finds that manifest
// stale (its sources changed) and starts from the source.
replace(outfile, result.outputFiles[0].contents);
replace(manifestFile, `${JSON.stringify({ inputs }, null, 2)}\n`);

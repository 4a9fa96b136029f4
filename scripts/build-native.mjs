// Builds native/sqlite-guard.c into native/build/sqlite-guard.so, the SQLite extension every
// `sqlite` store loads (see the file's header). Run by `npm ci` (postinstall) and `npm test`.
// It compiles against the SQLite headers better-sqlite3 ships, with the system's C compiler.
import { execFileSync } from 'node:child_process';
import { mkdirSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const source = join(root, 'native', 'sqlite-guard.c');
const output = join(root, 'native', 'build', 'sqlite-guard.so');
const headers = join(dirname(createRequire(import.meta.url).resolve('better-sqlite3/package.json')), 'deps', 'sqlite3');

const mtime = (path) => {
  try {
    return statSync(path).mtimeMs;
  } catch {
    return -1;
  }
};
if (mtime(output) > mtime(source)) process.exit(0);

mkdirSync(dirname(output), { recursive: true });
const compiler = process.env.CC || 'cc';
try {
  execFileSync(compiler, ['-O2', '-shared', '-fPIC', '-Wall', '-I', headers, '-o', output, source, '-lpthread'], { stdio: 'inherit' });
} catch (err) {
  console.error(`commitd: building ${source} with ${compiler} failed (${err.message}); sqlite stores need it. Install a C compiler (Debian: build-essential) and run \`npm run build:native\`.`);
  process.exit(1);
}

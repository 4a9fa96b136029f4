/**
 * The README's worker example works as written: its command line, taken from the README
 * itself, against a commitd configured as `npm start` leaves it (one store `main`; the
 * worker registers `audit`). With no server, it says so in one line, quickly.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { makeTempDir, removeTempDir, spawnTracked, type TrackedProcess } from './harness/child.ts';
import { freePort } from './harness/ports.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const MAIN = join(ROOT, 'src', 'main.ts');

/** The README's worker command, verbatim. */
function readmeWorkerCommand(): string {
  const line = readFileSync(join(ROOT, 'README.md'), 'utf8')
    .split('\n')
    .find((candidate) => candidate.includes('examples/worker.ts') && candidate.startsWith('printf'));
  assert.ok(line, 'the README shows how to run examples/worker.ts');
  return line;
}

async function shell(command: string, env: Record<string, string>): Promise<{ code: number; stdout: string; stderr: string; ms: number }> {
  const started = Date.now();
  try {
    const { stdout, stderr } = await promisify(execFile)('sh', ['-c', command], {
      cwd: ROOT,
      env: { PATH: process.env.PATH, HOME: process.env.HOME, ...env },
      timeout: 60_000,
    });
    return { code: 0, stdout, stderr, ms: Date.now() - started };
  } catch (error) {
    const failed = error as { code?: number; stdout?: string; stderr?: string };
    return { code: failed.code ?? -1, stdout: failed.stdout ?? '', stderr: failed.stderr ?? '', ms: Date.now() - started };
  }
}

describe("the README's worker example", () => {
  const dir = makeTempDir('worker');
  let server: TrackedProcess;
  let url: string;

  before(async () => {
    const port = await freePort();
    url = `http://127.0.0.1:${port}`;
    // The defaults of `npm start`, with the data dir in a temp dir (and the server's cwd there too).
    server = await spawnTracked(process.execPath, ['--import', import.meta.resolve('tsx'), MAIN], {
      name: 'commitd',
      cwd: dir,
      env: { PATH: process.env.PATH, HOME: process.env.HOME, COMMITD_PORT: String(port), COMMITD_DATA_DIR: join(dir, 'data'), COMMITD_LOG_LEVEL: 'warn' },
    });
    await server.waitReady(async () => (await fetch(`${url}/readyz`)).ok, { timeoutMs: 30_000, what: 'commitd /readyz' });
  });
  after(async () => {
    await server?.stop();
    await removeTempDir(dir);
  });

  it('commits the job to main and audit, and the same job again gets the same session ID', async () => {
    const command = readmeWorkerCommand();
    const first = await shell(command, { COMMITD_URL: url });
    assert.equal(first.code, 0, first.stderr);
    const committed = /^order-1 committed ([0-9a-f]{32})$/m.exec(first.stdout);
    assert.ok(committed, first.stdout + first.stderr);
    assert.match(first.stderr, /registered store "audit"/);
    assert.ok(existsSync(join(dir, 'data', 'audit.db')) || existsSync(join(dir, 'audit.db')), 'the audit store exists');
    const again = await shell(command, { COMMITD_URL: url });
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, new RegExp(`^order-1 committed ${committed[1]}$`, 'm'), 'a replay, nothing applied twice');
    assert.doesNotMatch(again.stderr, /registered/, 'audit is registered once');
  });

  it('with no server: one line, no stack trace, exit 1, within seconds', async () => {
    const port = await freePort();
    const result = await shell(readmeWorkerCommand(), { COMMITD_URL: `http://127.0.0.1:${port}` });
    assert.equal(result.code, 1);
    assert.equal(result.stdout, '');
    assert.deepEqual(result.stderr.trimEnd().split('\n'), [
      `worker: cannot reach http://127.0.0.1:${port}/v1/stores: ECONNREFUSED (is commitd running? npm start)`,
    ]);
    assert.ok(result.ms < 10_000, `took ${result.ms} ms`);
  });
});

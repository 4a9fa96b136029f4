/**
 * SIGTERM reaches commitd however it is launched: `npm start` (what the README says) and
 * `npx commitd serve`. Each time the launcher gets the signal, as a terminal, a process
 * manager or `docker stop` would send it, and the server must drain and exit — not be left
 * running as an orphan that still answers.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, describe, it } from 'node:test';
import { makeTempDir, removeTempDir, spawnTracked, type TrackedProcess } from './harness/child.ts';
import { freePort } from './harness/ports.ts';
import { waitFor } from './support/wait.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

/** True when `pid` has exited (gone, or a zombie its new parent has not reaped yet). */
function exited(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return true;
  }
}

async function refused(url: string): Promise<boolean> {
  try {
    await fetch(url, { signal: AbortSignal.timeout(1_000) });
    return false;
  } catch {
    return true;
  }
}

describe('SIGTERM to the launcher', () => {
  const dir = makeTempDir('launch');
  after(() => removeTempDir(dir));

  async function launch(label: string, command: string, args: readonly string[]): Promise<{ launcher: TrackedProcess; url: string; serverPid: number }> {
    const port = await freePort();
    const launcher = await spawnTracked(command, args, {
      name: `${command} ${args.join(' ')}`,
      cwd: ROOT,
      // A clean environment, as spawnCommitd gives: what a user's shell would pass, no test runner settings.
      env: { PATH: process.env.PATH, HOME: process.env.HOME, COMMITD_PORT: String(port), COMMITD_DATA_DIR: join(dir, label), COMMITD_LOG_LEVEL: 'info' },
    });
    const listening = await launcher.waitForLine(/"pid":(\d+).*commitd listening/, { timeoutMs: 60_000 });
    return { launcher, url: `http://127.0.0.1:${port}`, serverPid: Number(listening[1]) };
  }

  for (const [label, command, args] of [
    ['npm-start', 'npm', ['start']],
    ['npx-serve', 'npx', ['commitd', 'serve']],
  ] as const) {
    it(`${command} ${args.join(' ')}: the server drains and exits`, async () => {
      const { launcher, url, serverPid } = await launch(label, command, args);
      try {
        const begun = await fetch(`${url}/v1/sessions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"key":"open-at-term"}' });
        assert.equal(begun.status, 201);
        assert.notEqual(serverPid, launcher.pid, 'the server is its own process under the launcher');
        launcher.signal('SIGTERM');
        await launcher.waitForLine(/shutting down: no new requests, cancelling open sessions/, { timeoutMs: 10_000 });
        await waitFor('the server process to exit', () => exited(serverPid) || undefined, { timeoutMs: 20_000 });
        assert.ok(await refused(`${url}/healthz`), 'nothing answers on the port any more');
        await launcher.waitForExit(20_000);
      } finally {
        await launcher.kill();
        if (!exited(serverPid)) process.kill(serverPid, 'SIGKILL');
      }
    });
  }
});

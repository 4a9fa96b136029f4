/**
 * Model-checks docs/model/commitd.pml with spin: the protocol must verify with no errors,
 * and each deliberately broken variant must be caught (the check has teeth).
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { makeTempDir, removeTempDir } from './harness/child.ts';
import { requireBinary, skipUnlessFound } from './harness/require.ts';

const run = promisify(execFile);
const MODEL = fileURLToPath(new URL('../docs/model/commitd.pml', import.meta.url));

interface Verification {
  readonly output: string;
  readonly errors: number;
  readonly states: number;
}

/** spin -a, gcc, ./pan in a temp dir of its own; returns pan's report. */
async function verify(defines: readonly string[]): Promise<Verification> {
  const dir = makeTempDir('spin');
  try {
    copyFileSync(MODEL, join(dir, 'commitd.pml'));
    const options = { cwd: dir, timeout: 180_000, maxBuffer: 16 * 1024 * 1024 };
    await run('spin', ['-a', ...defines, 'commitd.pml'], options);
    await run('gcc', ['-O2', '-o', 'pan', 'pan.c'], options);
    // pan's exit status is not a verdict: its report is.
    const { stdout, stderr } = await run('./pan', ['-m100000'], options).catch((err: { stdout?: string; stderr?: string }) => ({
      stdout: err.stdout ?? '',
      stderr: err.stderr ?? '',
    }));
    const output = `${stdout}\n${stderr}`;
    const errors = /errors: (\d+)/.exec(output);
    const states = /(\d+) states, stored/.exec(output);
    assert.ok(errors && states, `pan printed no verdict:\n${output}`);
    assert.doesNotMatch(output, /max search depth too small|out of memory/, output);
    return { output, errors: Number(errors[1]), states: Number(states[1]) };
  } finally {
    await removeTempDir(dir);
  }
}

const TOOLS = { 'spin (apt-get install -y spin)': requireBinary('spin'), 'gcc (apt-get install -y gcc)': requireBinary('gcc') };

describe('the Promela model of the commit protocol', { concurrency: true, skip: skipUnlessFound(TOOLS) }, () => {
  it('verifies: at most once, nothing before the commit point, finished means committed', async () => {
    const { output, errors, states } = await verify([]);
    assert.equal(errors, 0, output);
    assert.match(output, /Full statespace search/, output);
    // Every step of the coordinator is reachable: the model is not vacuous.
    assert.match(output, /unreached in proctype coord\s+\(0 of \d+ states\)/, output);
    assert.ok(states > 10_000, `suspiciously few states: ${states}`);
  });

  it('catches stores that commit without the marker check (-DNO_MARKER): a paused owner applies twice', async () => {
    const { output, errors } = await verify(['-DNO_MARKER']);
    assert.ok(errors > 0, output);
    assert.match(output, /assertion violated \(\(applied\[0\]<=1\)&&\(applied\[1\]<=1\)\)/, output);
  });

  it('catches recovery that cancels committing sessions (-DCANCEL_COMMITTING): no result', async () => {
    const { output, errors } = await verify(['-DCANCEL_COMMITTING']);
    assert.ok(errors > 0, output);
    assert.match(output, /assertion violated .*commit_point&&adopter_done/, output);
  });

  it('catches an early reply sent before every store committed (-DREPLY_BEFORE_STORES)', async () => {
    const { output, errors } = await verify(['-DREPLY_BEFORE_STORES']);
    assert.ok(errors > 0, output);
    assert.match(output, /assertion violated \( ?!\(answered\)\|\|/, output);
  });
});

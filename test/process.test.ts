/**
 * commitd as a process: clean SIGTERM, and start-up failures that name their cause.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { makeTempDir, removeTempDir } from './harness/child.ts';
import { freePort } from './harness/ports.ts';
import { spawnCommitd, startProcess, type CommitdEnv } from './support/process.ts';
import { sqliteStores } from './support/service.ts';

describe('commitd process', () => {
  const dir = makeTempDir('proc');
  after(() => removeTempDir(dir));

  it('SIGTERM cancels open sessions and exits 0', async () => {
    const service = await startProcess({ dir: join(dir, 'term'), stores: sqliteStores(join(dir, 'term')) });
    const begun = await service.request('POST', '/v1/sessions', { key: 'open-at-shutdown' });
    assert.equal(begun.status, 201);
    service.process.signal('SIGTERM');
    const exit = await service.process.waitForExit(20_000);
    assert.equal(exit.code, 0, service.process.output(20));
    const restarted = await startProcess({ dir: join(dir, 'term'), stores: sqliteStores(join(dir, 'term')) });
    try {
      assert.equal((await restarted.request('GET', '/v1/sessions/open-at-shutdown')).status, 404);
    } finally {
      await restarted.process.stop();
    }
  });

  async function startFails(env: CommitdEnv): Promise<{ code: number | null; output: string }> {
    const child = await spawnCommitd({ env: { COMMITD_DATA_DIR: join(dir, 'bad'), COMMITD_PORT: String(await freePort()), ...env } });
    const exit = await child.waitForExit(20_000);
    return { code: exit.code, output: child.output() };
  }

  it('an invalid environment value exits 2 with one line naming it', async () => {
    const { code, output } = await startFails({ COMMITD_PORT: 'eighty' });
    assert.equal(code, 2);
    assert.match(output, /COMMITD_PORT/);
  });

  it('an invalid config file exits 2 naming the field', async () => {
    const file = join(dir, 'bad-config.json');
    writeFileSync(file, JSON.stringify({ stores: [{ name: 'x', type: 42 }] }));
    const { code, output } = await startFails({ COMMITD_CONFIG: file });
    assert.equal(code, 2);
    assert.match(output, /stores\[0\]\.type|stores\/0\/type/);
  });

  it('a broken plugin stops start-up with one line naming the module', async () => {
    const plugin = join(dir, 'broken-plugin.ts');
    writeFileSync(plugin, 'export default { type: "broken" };\n');
    const file = join(dir, 'plugin-config.json');
    writeFileSync(file, JSON.stringify({ plugins: ['./broken-plugin.ts'] }));
    const { code, output } = await startFails({ COMMITD_CONFIG: file });
    assert.notEqual(code, 0);
    assert.match(output, /broken-plugin\.ts/);
  });
});

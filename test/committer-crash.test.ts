/**
 * A process that wrote the slot and died before commit leaves the key in the KV; a new
 * process on the same KV resumes with beginRecovery on every committable. Both backends.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { MultiCommitter } from '../src/core/multi-committer.ts';
import { makeTempDir, removeTempDir, spawnTsx } from './harness/child.ts';
import { skipUnlessFound } from './harness/require.ts';
import { kvFromArg } from './fixtures/kv-from-arg.ts';
import { MemoryDatastore } from './support/memory-store.ts';
import { Recording } from './support/recording.ts';
import { KV_BACKENDS, kvNeeds, sharedEtcdServer } from './support/service.ts';

const fixture = new URL('./fixtures/committer-crash.ts', import.meta.url).pathname;

for (const backend of KV_BACKENDS) {
  describe(`a crash between slot write and commit (${backend} KV)`, { skip: skipUnlessFound(kvNeeds(backend)) }, () => {
    const dir = makeTempDir('crash');
    after(() => removeTempDir(dir));

    it('the next process with the same key recovers on every committable', async () => {
      const target = backend === 'sqlite' ? join(dir, 'kv.db') : `etcd|${(await sharedEtcdServer()).endpoints.join(',')}|/crash-${randomUUID()}/`;
      const child = await spawnTsx(fixture, [target, 'crash-key']);
      await child.waitForLine(/^began$/, { timeoutMs: 20_000 });
      const exit = await child.waitForExit(20_000);
      assert.equal(exit.signal, 'SIGKILL');

      const kv = kvFromArg(target);
      try {
        const journal: string[] = [];
        const [alphaStore, betaStore] = [new MemoryDatastore(), new MemoryDatastore()];
        const alpha = new Recording('alpha', alphaStore.session('alpha'), journal);
        const beta = new Recording('beta', betaStore.session('beta'), journal);
        const committer = new MultiCommitter(kv, { alpha, beta });
        await assert.rejects(committer.begin('another-key'), { code: 'IDEMPOTENCY_KEY_MISMATCH' });
        const { recovery } = await committer.begin('crash-key');
        assert.equal(recovery, true);
        assert.deepEqual(
          journal.filter((call) => !call.endsWith('cancel')),
          ['alpha.beginRecovery', 'beta.beginRecovery'],
        );
        await alpha.inner.apply({ set: 'x', value: 1 });
        await committer.commit('crash-key');
        assert.equal(await kv.get('slot'), undefined);
        assert.equal(alphaStore.data.get('x'), 1);
      } finally {
        await kv.close();
      }
    });
  });
}

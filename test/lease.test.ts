/**
 * Sessions this instance owns are served from memory while its lease holds, and only then.
 * The lease-lost case is produced for real: the event loop is blocked (synchronously, as a
 * long GC pause or a SIGSTOP would) past the lease TTL, so no renewal reaches the KV and
 * the expiry timer has not run yet when the next request arrives.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { KeyReusedError, SessionBusyError, SessionNotFoundError } from '../src/coordinator/errors.ts';
import { skipUnlessFound } from './harness/require.ts';
import { ids, sqliteRun } from './support/rows.ts';
import { KV_BACKENDS, kvNeeds, startTestService, type TestService } from './support/service.ts';
import { waitFor } from './support/wait.ts';

const LEASE_TTL_SECONDS = 1;
const insert = (id: number) => ({ sql: 'INSERT INTO t(id) VALUES (?)', params: [id] });

/** Blocks this thread, timers and I/O included, for `ms`. */
function blockEventLoop(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

const rows = (service: TestService): number[] => ids(join(service.dir, 'main.db'));

/** Successful KV reads (`get`) so far, from commitd's own metrics. */
async function kvGets(service: TestService): Promise<number> {
  const res = await service.app.inject({ method: 'GET', url: '/metrics' });
  const match = /^commitd_kv_operation_duration_seconds_count\{op="get",ok="true"\} (\d+)$/m.exec(res.body);
  return match ? Number(match[1]) : 0;
}

async function startWithTable(kv: (typeof KV_BACKENDS)[number], lease: { leaseTtlSeconds?: number } = {}): Promise<TestService> {
  const service = await startTestService({ kv, ...lease });
  sqliteRun(join(service.dir, 'main.db'), 'CREATE TABLE t(id INTEGER PRIMARY KEY)');
  return service;
}

for (const kv of KV_BACKENDS) {
  describe(`owned sessions and the lease, ${kv} KV`, { skip: skipUnlessFound(kvNeeds(kv)) }, () => {
    it('while the lease holds, reading and changing an owned session reads nothing from the KV', async (t) => {
      // The service's usual lease: with the 1 s one, a loaded machine stalling the event loop
      // for 2/3 s loses it mid-test, and this test is about the lease holding.
      const service = await startWithTable(kv);
      t.after(() => service.dispose());
      const { coordinator } = service;
      await coordinator.begin('k', ['main']);
      const before = await kvGets(service);
      for (let i = 1; i <= 5; i++) {
        await coordinator.apply('k', 'main', [insert(i)]);
        assert.equal((await coordinator.get('k'))?.state, 'active');
      }
      assert.equal(await kvGets(service), before, 'no KV read for what only this instance can change');
      await coordinator.commit('k');
      assert.deepEqual(rows(service), [1, 2, 3, 4, 5]);
    });

    it('past the lease an instance stops answering from memory: its session is refused, nothing of it commits', async (t) => {
      const service = await startWithTable(kv, { leaseTtlSeconds: LEASE_TTL_SECONDS });
      t.after(() => service.dispose());
      const { coordinator } = service;
      await coordinator.begin('k', ['main']);
      await coordinator.apply('k', 'main', [insert(1)]);

      blockEventLoop(LEASE_TTL_SECONDS * 1000 + 300);
      // Called before any timer can run: only the clock says the lease is gone.
      await assert.rejects(coordinator.apply('k', 'main', [insert(2)]), SessionBusyError, 'a change for a session no longer certainly ours is refused');

      // The record went back to the KV, where recovery (here, the commit request) decides:
      // an active session is cancelled, so commit answers not found and no row lands.
      await assert.rejects(coordinator.commit('k'), SessionNotFoundError);
      assert.deepEqual(rows(service), []);

      // The instance registers again and works as before.
      await waitFor('a session to open again', async () => (await coordinator.begin('again', ['main'])).state);
      await coordinator.apply('again', 'main', [insert(3)]);
      await coordinator.commit('again');
      assert.deepEqual(rows(service), [3]);
    });

    it('past the lease an instance opens no session until it has registered again', async (t) => {
      const service = await startWithTable(kv, { leaseTtlSeconds: LEASE_TTL_SECONDS });
      t.after(() => service.dispose());
      const { coordinator } = service;
      blockEventLoop(LEASE_TTL_SECONDS * 1000 + 300);
      // A record written now could be taken for a dead instance's at once.
      await assert.rejects(coordinator.begin('k', ['main']), /lost its lease/);
      await waitFor('a session to open again', async () => (await coordinator.commitOnce('k', { main: [insert(1)] })).state);
      assert.deepEqual(rows(service), [1]);
    });

    it('past the lease a key already committed is still answered from the KV: its retry gets the same session ID', async (t) => {
      const service = await startWithTable(kv, { leaseTtlSeconds: LEASE_TTL_SECONDS });
      t.after(() => service.dispose());
      const { coordinator } = service;
      const changes = { main: [insert(1)] };
      const first = await coordinator.commitOnce('k', changes);
      await coordinator.begin('s', ['main']);
      await coordinator.apply('s', 'main', [insert(2)]);
      const interactive = await coordinator.commit('s');

      blockEventLoop(LEASE_TTL_SECONDS * 1000 + 300);
      // The answer is in the KV and needs no lease: a client retrying after its instance
      // stalled (a GC pause, a SIGSTOP) gets it instead of a 503.
      const retried = await coordinator.commitOnce('k', changes);
      assert.equal(retried.sessionId, first.sessionId);
      assert.equal(retried.replayed, true);
      await assert.rejects(coordinator.commitOnce('k', { main: [insert(3)] }), KeyReusedError, 'other changes under the key are refused');
      const begun = await coordinator.begin('s', ['main']);
      assert.equal(begun.state, 'committed');
      assert.equal('sessionId' in begun ? begun.sessionId : undefined, interactive.sessionId);
      assert.deepEqual(rows(service), [1, 2], 'nothing applied twice');
    });
  });
}

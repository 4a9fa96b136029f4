/**
 * The session lifecycle through the HTTP API, against both KV backends: interactive and
 * one-shot commits, replay, key reuse, cancel, recovery of a crashed session, load.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { join } from 'node:path';
import { pino } from 'pino';
import { createService } from '../src/service.ts';
import { makeTempDir, removeTempDir } from './harness/child.ts';
import { startEtcd } from './harness/etcd.ts';
import { skipUnlessFound } from './harness/require.ts';
import { ids, sqliteRun } from './support/rows.ts';
import { KV_BACKENDS, kvNeeds, startTestService, type TestService } from './support/service.ts';

const insert = (table: string, id: number) => ({ sql: `INSERT INTO ${table}(id) VALUES (?)`, params: [id] });

const rows = (service: TestService, store: string, table: string): number[] => ids(join(service.dir, `${store}.db`), table);

for (const kv of KV_BACKENDS) {
  describe(`sessions over ${kv} KV`, { skip: skipUnlessFound(kvNeeds(kv)) }, () => {
    let service: TestService;

    before(async () => {
      service = await startTestService({ kv });
      for (const store of ['main', 'audit']) {
        const res = await service.app.inject({
          method: 'POST',
          url: '/v1/commits',
          payload: { key: `setup-${store}`, changes: { [store]: [{ sql: 'CREATE TABLE t(id INTEGER PRIMARY KEY)' }] } },
        });
        assert.equal(res.statusCode, 200, res.body);
      }
    });
    after(async () => service?.dispose());

    const post = (url: string, payload?: object) => service.app.inject({ method: 'POST', url, payload });

    it('an interactive session commits two sqlite stores; replay returns the same sessionId', async () => {
      const begun = await post('/v1/sessions', { key: 'order-1', stores: ['main', 'audit'] });
      assert.equal(begun.statusCode, 201, begun.body);
      assert.deepEqual(begun.json(), { key: 'order-1', state: 'active', recovery: false, stores: ['audit', 'main'] });
      assert.equal((await post('/v1/sessions/order-1/changes', { store: 'main', changes: [insert('t', 1), insert('t', 2)] })).statusCode, 200);
      const applied = await post('/v1/sessions/order-1/changes', { store: 'audit', changes: [insert('t', 1)] });
      assert.deepEqual(applied.json(), { key: 'order-1', store: 'audit', applied: 1 });
      const committed = await post('/v1/sessions/order-1/commit');
      assert.equal(committed.statusCode, 200, committed.body);
      const body = committed.json();
      assert.equal(body.state, 'committed');
      assert.match(body.sessionId, /^[0-9a-f]{32}$/);
      assert.deepEqual(Object.keys(body.stores).sort(), ['audit', 'main']);
      assert.deepEqual(
        rows(service, 'main', 't').filter((id) => id <= 2),
        [1, 2],
      );

      const again = await post('/v1/sessions/order-1/commit');
      assert.equal(again.statusCode, 200);
      assert.equal(again.json().sessionId, body.sessionId);
      const rebegun = await post('/v1/sessions', { key: 'order-1', stores: ['main', 'audit'] });
      assert.equal(rebegun.statusCode, 200);
      assert.equal(rebegun.json().state, 'committed');
      assert.equal(rebegun.json().sessionId, body.sessionId);
      const shown = await service.app.inject({ method: 'GET', url: '/v1/sessions/order-1' });
      assert.equal(shown.json().sessionId, body.sessionId);
      assert.deepEqual(
        rows(service, 'main', 't').filter((id) => id <= 2),
        [1, 2],
        'replays must not apply twice',
      );
    });

    it('a one-shot commit replays with the same answer; other changes under the key get 422', async () => {
      const changes = { main: [insert('t', 10)], audit: [insert('t', 10)] };
      const first = await post('/v1/commits', { key: 'once-1', changes });
      assert.equal(first.statusCode, 200, first.body);
      const second = await post('/v1/commits', { key: 'once-1', changes });
      assert.deepEqual(second.json(), first.json());
      const reused = await post('/v1/commits', { key: 'once-1', changes: { main: [insert('t', 11)] } });
      assert.equal(reused.statusCode, 422);
      assert.equal(reused.json().code, 'key_reused');
      assert.equal(rows(service, 'main', 't').filter((id) => id >= 10 && id < 20).length, 1);
    });

    it('the same session ID for the same changes under another key', async () => {
      const a = await post('/v1/commits', { key: 'same-a', changes: { main: [{ sql: 'SELECT 1' }] } });
      const b = await post('/v1/commits', { key: 'same-b', changes: { main: [{ sql: 'SELECT 1' }] } });
      assert.equal(a.json().sessionId, b.json().sessionId);
    });

    it('a begin on an open key is session_busy; cancel frees the key and applies nothing', async () => {
      assert.equal((await post('/v1/sessions', { key: 'busy-1' })).statusCode, 201);
      await post('/v1/sessions/busy-1/changes', { store: 'main', changes: [insert('t', 30)] });
      const busy = await post('/v1/sessions', { key: 'busy-1' });
      assert.equal(busy.statusCode, 409);
      assert.equal(busy.json().code, 'session_busy');
      const cancelled = await post('/v1/sessions/busy-1/cancel');
      assert.deepEqual(cancelled.json(), { key: 'busy-1', state: 'cancelled' });
      assert.equal((await service.app.inject({ method: 'GET', url: '/v1/sessions/busy-1' })).statusCode, 404);
      assert.equal(rows(service, 'main', 't').includes(30), false);
      assert.equal((await post('/v1/sessions', { key: 'busy-1' })).statusCode, 201);
      await post('/v1/sessions/busy-1/cancel');
    });

    it('a store rejecting a change cancels the session with 409 store_conflict', async () => {
      await post('/v1/sessions', { key: 'conflict-1', stores: ['main'] });
      await post('/v1/sessions/conflict-1/changes', { store: 'main', changes: [insert('t', 40), insert('t', 40)] });
      const res = await post('/v1/sessions/conflict-1/commit');
      assert.equal(res.statusCode, 409, res.body);
      assert.equal(res.json().code, 'store_conflict');
      assert.equal(rows(service, 'main', 't').includes(40), false);
      assert.equal((await service.app.inject({ method: 'GET', url: '/v1/sessions/conflict-1' })).statusCode, 404);
    });

    it('a change log larger than one KV value is split and the session commits', async () => {
      // A sqlite change must compile against the committed schema: create the table first.
      await post('/v1/commits', { key: 'big-schema', changes: { main: [{ sql: 'CREATE TABLE big(id INTEGER PRIMARY KEY, pad TEXT)' }] } });
      await post('/v1/sessions', { key: 'big-1', stores: ['main'] });
      const pad = 'x'.repeat(300_000);
      for (let i = 0; i < 5; i++) {
        const res = await post('/v1/sessions/big-1/changes', { store: 'main', changes: [{ sql: 'INSERT INTO big VALUES (?, ?)', params: [i, pad] }] });
        assert.equal(res.statusCode, 200, res.body);
      }
      const res = await post('/v1/sessions/big-1/commit');
      assert.equal(res.statusCode, 200, res.body);
      assert.deepEqual(rows(service, 'main', 'big'), [0, 1, 2, 3, 4]);
      // The answer leaves once the stores committed; the result write (which deletes the
      // record and its chunks) lands just after it.
      const deadline = Date.now() + 10_000;
      while ((await service.kv.list('logs/')).length > 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10));
      assert.deepEqual(await service.kv.list('logs/'), [], 'log chunks are deleted with the session');
    });

    it('500 concurrent one-shot commits with distinct keys all commit, each row once', async () => {
      const results = await Promise.all(
        Array.from({ length: 500 }, (_, i) =>
          post('/v1/commits', { key: `load-${i}`, changes: { main: [insert('t', 1000 + i)], audit: [insert('t', 1000 + i)] } }),
        ),
      );
      assert.deepEqual(
        results.filter((r) => r.statusCode !== 200).map((r) => r.body),
        [],
        'every commit answers 200',
      );
      const ids = rows(service, 'main', 't').filter((id) => id >= 1000);
      assert.equal(ids.length, 500);
      assert.equal(rows(service, 'audit', 't').filter((id) => id >= 1000).length, 500);
    });
  });
}

describe('the committing record', () => {
  it('carries the session ID the commit ends with, counting stores that got no change', async () => {
    const service = await startTestService({ kv: 'sqlite', failpoints: 'commit.afterIntent=delay(1000)' });
    try {
      sqliteRun(join(service.dir, 'main.db'), 'CREATE TABLE t(id INTEGER PRIMARY KEY)');
      // Two stores, changes for one of them only.
      await service.coordinator.begin('partial', ['main', 'audit']);
      await service.coordinator.apply('partial', 'main', [insert('t', 1)]);
      const committed = service.coordinator.commit('partial');
      let record: { state: string; sessionId: string } | undefined;
      for (let i = 0; i < 100 && record?.state !== 'committing'; i++) {
        await new Promise((resolve) => setTimeout(resolve, 20));
        const entry = await service.kv.get('sessions/partial');
        record = entry && (JSON.parse(entry.value) as { state: string; sessionId: string });
      }
      assert.equal(record?.state, 'committing');
      assert.equal(record?.sessionId, (await committed).sessionId);
    } finally {
      await service.dispose();
    }
  });
});

describe('idle timeout and readiness', () => {
  it('an abandoned session is cancelled after the idle timeout', async () => {
    const service = await startTestService({ kv: 'sqlite', idleTimeoutMs: 300 });
    try {
      const begun = await service.app.inject({ method: 'POST', url: '/v1/sessions', payload: { key: 'idle-1' } });
      assert.equal(begun.statusCode, 201);
      const deadline = Date.now() + 10_000;
      let status = 200;
      while (status !== 404 && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 100));
        status = (await service.app.inject({ method: 'GET', url: '/v1/sessions/idle-1' })).statusCode;
      }
      assert.equal(status, 404, 'the idle session must be cancelled');
      assert.match((await service.app.inject({ method: 'GET', url: '/metrics' })).body, /commitd_sessions_cancelled_total\{reason="idle"\} 1/);
    } finally {
      await service.dispose();
    }
  });

  it('/readyz answers 503 while etcd is down and 200 once it is back', { skip: skipUnlessFound(kvNeeds('etcd')) }, async () => {
    const etcd = await startEtcd();
    const dir = makeTempDir('ready');
    const service = await createService(
      {
        dataDir: dir,
        host: '127.0.0.1',
        stores: [],
        plugins: [],
        retentionSeconds: 60,
        idleTimeoutMs: 60_000,
        maxOpenSessions: 10,
        leaseTtlSeconds: 5,
        kvTimeoutMs: 1000,
        etcd: { endpoints: etcd.endpoints, namespace: '/ready/' },
      },
      pino({ level: 'silent' }),
    );
    try {
      assert.equal((await service.app.inject({ method: 'GET', url: '/readyz' })).statusCode, 200);
      await etcd.kill();
      const down = await service.app.inject({ method: 'GET', url: '/readyz' });
      assert.equal(down.statusCode, 503);
      assert.ok(down.headers['retry-after']);
      assert.equal((await service.app.inject({ method: 'GET', url: '/healthz' })).statusCode, 200, 'liveness stays up');
      await etcd.restart();
      const deadline = Date.now() + 20_000;
      let status = 503;
      while (status !== 200 && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 250));
        status = (await service.app.inject({ method: 'GET', url: '/readyz' })).statusCode;
      }
      assert.equal(status, 200, 'ready again once etcd is back');
    } finally {
      await service.close().catch(() => undefined);
      await etcd.cleanup();
      await removeTempDir(dir);
    }
  });
});

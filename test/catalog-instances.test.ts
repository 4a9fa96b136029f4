/**
 * The store catalog across real processes: a store registered on one instance is used on
 * another on the same etcd within 2 s; a session SIGKILLed past its commit point on a
 * runtime store recovers by itself after a restart; the store is still there after every
 * instance restarted. And instance ids: a second live process with a registered id refuses
 * to start with one line, while a restart after a crash takes its id over at once.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { makeTempDir, removeTempDir } from './harness/child.ts';
import { redisBinary, startRedis, type RedisServer } from './harness/redis.ts';
import { freePort } from './harness/ports.ts';
import { skipUnlessFound } from './harness/require.ts';
import { startProcess, type ProcessService, type ProcessServiceOptions } from './support/process.ts';
import { countRows, sqliteRun } from './support/rows.ts';
import { KV_BACKENDS, kvNeeds, sharedEtcdServer, sqliteStores } from './support/service.ts';
import { waitFor } from './support/wait.ts';

const insert = (key: string) => ({ sql: 'INSERT INTO t(k, n) VALUES (?, 1)', params: [key] });

async function storeStatus(instance: ProcessService, name: string): Promise<Record<string, unknown> | undefined> {
  const listed = await instance.request('GET', '/v1/stores');
  return (listed.body.stores as Record<string, unknown>[]).find((store) => store.name === name);
}

describe('the store catalog across two instances on one etcd', { skip: skipUnlessFound({ ...kvNeeds('etcd'), redis: redisBinary() }) }, () => {
  const root = makeTempDir('catalog-multi');
  const shared = join(root, 'shared');
  const started: ProcessService[] = [];
  let etcd: ProcessServiceOptions['etcd'];
  let redis: RedisServer;

  before(async () => {
    etcd = { endpoints: (await sharedEtcdServer()).endpoints, namespace: `/catalog-${randomUUID()}/` };
    redis = await startRedis();
    mkdirSync(shared, { recursive: true });
  });
  after(async () => {
    await Promise.all(started.map((instance) => instance.process.kill('SIGKILL').catch(() => undefined)));
    await redis?.cleanup();
    await removeTempDir(root);
  });

  const options = (name: 'a' | 'b'): ProcessServiceOptions => ({
    dir: join(root, name),
    stores: sqliteStores(join(root, name), ['main']),
    etcd,
    config: { leaseTtl: '2s', recoveryInterval: '500ms', storeRoots: [shared] },
  });
  const start = async (name: 'a' | 'b', failpoints?: string) => {
    const instance = await startProcess(options(name), failpoints);
    started.push(instance);
    return instance;
  };

  it('registered on A, used on B within 2 s; a crash past the commit point recovers after restart; still there after both restart', async () => {
    const a = await start('a');
    const b = await start('b');
    // A redis store opens in milliseconds: the time measured is the catalog's, not a store's start-up.
    const cached = await a.request('POST', '/v1/stores', { name: 'cache', type: 'redis', options: { url: redis.url } });
    assert.equal(cached.status, 201, JSON.stringify(cached.body));
    const registeredAt = performance.now();
    const onBFirst = `fast-${randomUUID()}`;
    await waitFor(
      'cache used on B',
      async () => {
        const reply = await b.request('POST', '/v1/commits', { key: onBFirst, changes: { cache: [{ command: ['SET', onBFirst, '1'] }] } });
        return reply.status === 200 ? true : undefined;
      },
      { timeoutMs: 10_000, intervalMs: 20 },
    );
    const elapsed = performance.now() - registeredAt;
    assert.ok(elapsed <= 2000, `B committed to the store ${Math.round(elapsed)} ms after its registration on A`);

    const path = join(shared, 'rt.db');
    const added = await a.request('POST', '/v1/stores', { name: 'rt', type: 'sqlite', options: { path } });
    assert.equal(added.status, 201, JSON.stringify(added.body));
    await waitFor('rt open on B', async () => ((await storeStatus(b, 'rt'))?.status === 'open' ? true : undefined), { timeoutMs: 20_000 });
    sqliteRun(path, 'CREATE TABLE t(k TEXT, n INTEGER)');
    const onB = `on-b-${randomUUID()}`;
    const committed = await b.request('POST', '/v1/commits', { key: onB, changes: { rt: [insert(onB)] } });
    assert.equal(committed.status, 200, JSON.stringify(committed.body));
    assert.equal(countRows(path, onB), 1);

    // Both go down; A comes back with a failpoint and dies past the commit point on rt.
    await Promise.all([a.process.kill('SIGKILL'), b.process.kill('SIGKILL')]);
    const crashing = await start('a', 'commit.afterIntent=crash');
    const key = `crash-${randomUUID()}`;
    await crashing.request('POST', '/v1/commits', { key, changes: { rt: [insert(key)] } }).catch(() => undefined);
    await crashing.process.waitForExit(15_000);
    assert.equal(countRows(path, key), 0, 'nothing committed before the crash');

    const a2 = await start('a');
    const b2 = await start('b');
    await waitFor(
      `${key} recovered`,
      async () => {
        const shown = await a2.request('GET', `/v1/sessions/${key}`);
        return shown.body.state === 'committed' ? true : undefined;
      },
      { timeoutMs: 20_000 },
    );
    assert.equal(countRows(path, key), 1, 'committed exactly once');
    for (const instance of [a2, b2]) {
      for (const name of ['rt', 'cache']) {
        const store = await waitFor(`${name} listed`, async () =>
          (await storeStatus(instance, name))?.status === 'open' ? storeStatus(instance, name) : undefined,
        );
        assert.equal(store?.origin, 'runtime');
      }
    }
    const retried = await b2.request('POST', '/v1/commits', { key, changes: { rt: [insert(key)] } });
    assert.equal(retried.status, 200, JSON.stringify(retried.body));
    assert.equal(countRows(path, key), 1, 'the retry changed nothing');
  });

  it('a second live process with a registered instance id refuses to start with one line', async () => {
    const first = await startProcess({ ...options('a'), dir: join(root, 'dup1'), stores: [], config: { instanceId: 'twin' } });
    started.push(first);
    const second = await startProcess({ ...options('a'), dir: join(root, 'dup2'), stores: [], config: { instanceId: 'twin' } }, undefined, false);
    started.push(second);
    const exit = await second.process.waitForExit(30_000);
    assert.notEqual(exit.code, 0);
    const line = await second.process.waitForLine(/^commitd: /, { stream: 'stderr', timeoutMs: 1000 });
    assert.match(line.input ?? '', /instance id "twin" is in use by another live process/);
    assert.equal((await first.request('GET', '/healthz')).status, 200, 'the first one serves on');
    // A crashed run's id is taken over at once by its restart.
    await first.process.kill('SIGKILL');
    const restarted = await startProcess({ ...options('a'), dir: join(root, 'dup1'), stores: [], config: { instanceId: 'twin' } });
    started.push(restarted);
    assert.equal((await restarted.request('GET', '/healthz')).status, 200);
  });
});

for (const kv of KV_BACKENDS) {
  describe(`a runtime store through a crash (${kv} KV)`, { skip: skipUnlessFound(kvNeeds(kv)) }, () => {
    const root = makeTempDir('catalog-crash');
    const started: ProcessService[] = [];
    let etcd: ProcessServiceOptions['etcd'];
    before(async () => {
      if (kv === 'etcd') etcd = { endpoints: (await sharedEtcdServer()).endpoints, namespace: `/catalog-crash-${randomUUID()}/` };
    });
    after(async () => {
      await Promise.all(started.map((instance) => instance.process.kill('SIGKILL').catch(() => undefined)));
      await removeTempDir(root);
    });

    it('recovers a session past its commit point on a runtime store by itself after the restart', async () => {
      const options: ProcessServiceOptions = { dir: root, stores: [], etcd };
      const first = await startProcess(options, 'commit.afterIntent=crash');
      started.push(first);
      assert.equal((await first.request('POST', '/v1/stores', { name: 'rt', type: 'sqlite', options: { path: 'rt.db' } })).status, 201);
      const path = join(root, 'rt.db');
      sqliteRun(path, 'CREATE TABLE t(k TEXT, n INTEGER)');
      const key = `crash-${randomUUID()}`;
      await first.request('POST', '/v1/commits', { key, changes: { rt: [insert(key)] } }).catch(() => undefined);
      await first.process.waitForExit(15_000);
      const second = await startProcess(options);
      started.push(second);
      const shown = await waitFor('committed', async () => {
        const reply = await second.request('GET', `/v1/sessions/${key}`);
        return reply.body.state === 'committed' ? reply : undefined;
      });
      assert.equal(shown.body.state, 'committed');
      assert.equal(countRows(path, key), 1);
    });

    it('logs a config store that cannot be reached at once at start-up; the others serve', async () => {
      const dir = join(root, 'unreachable');
      const closedPort = await freePort();
      const stores = [...sqliteStores(dir, ['main']), { name: 'cache', type: 'redis', options: { url: `redis://127.0.0.1:${closedPort}` } }];
      const instance = await startProcess({ dir, stores, etcd: etcd && { ...etcd, namespace: `${etcd.namespace}unreachable/` } });
      started.push(instance);
      const logged = await instance.process.waitForLine(/store cannot be opened here/, { timeoutMs: 1000 });
      assert.match(logged.input ?? '', /"store":"cache"/);
      const ready = await instance.request('GET', '/readyz');
      assert.equal(ready.status, 200);
      assert.deepEqual(ready.body.stores, [
        { name: 'cache', status: 'down', error: (ready.body.stores as { error?: string }[])[0]?.error },
        { name: 'main', status: 'up' },
      ]);
      sqliteRun(join(dir, 'main.db'), 'CREATE TABLE t(k TEXT, n INTEGER)');
      const key = `served-${randomUUID()}`;
      assert.equal((await instance.request('POST', '/v1/commits', { key, changes: { main: [insert(key)] } })).status, 200);
    });

    if (kv === 'sqlite') {
      it('a second live process on the same data dir refuses to start with one line', async () => {
        const dir = join(root, 'dup');
        const first = await startProcess({ dir, stores: [] });
        started.push(first);
        const second = await startProcess({ dir, stores: [] }, undefined, false);
        started.push(second);
        const exit = await second.process.waitForExit(30_000);
        assert.notEqual(exit.code, 0);
        const line = await second.process.waitForLine(/^commitd: /, { stream: 'stderr', timeoutMs: 1000 });
        assert.match(line.input ?? '', /is in use by another live process/);
        assert.equal((await first.request('GET', '/healthz')).status, 200);
      });
    }
  });
}

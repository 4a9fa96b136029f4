/**
 * The store catalog and confined registration over HTTP, on both KV backends (DESIGN
 * "Store catalog", "The boundary" point 7): a runtime store survives a restart, removal
 * is refused while a session needs the store and leaves an audit record, sqlite paths stay
 * inside the data dir or a storeRoots folder, malformed or unreachable stores are refused
 * at registration, `{"env"}` values resolve from the environment and credentials are never
 * stored, and /readyz lists each store up or down within 1 s.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { catalogKeys } from '../src/stores/catalog.ts';
import { redactOptions } from '../src/stores/options.ts';
import { makeTempDir, removeTempDir } from './harness/child.ts';
import { freePort } from './harness/ports.ts';
import { skipUnlessFound } from './harness/require.ts';
import { KV_BACKENDS, kvNeeds, sqliteStores, startTestService, type TestService } from './support/service.ts';
import { sqliteRun, countRows } from './support/rows.ts';

type Reply = { status: number; body: Record<string, unknown> };

async function call(service: TestService, method: 'GET' | 'POST' | 'DELETE', url: string, payload?: unknown): Promise<Reply> {
  const response = await service.app.inject({
    method,
    url,
    ...(payload === undefined ? {} : { headers: { 'content-type': 'application/json' }, payload: JSON.stringify(payload) }),
  });
  return { status: response.statusCode, body: response.body === '' ? {} : (JSON.parse(response.body) as Record<string, unknown>) };
}

const register = (service: TestService, name: string, type: string, options: unknown) => call(service, 'POST', '/v1/stores', { name, type, options });

function listed(reply: Reply): Record<string, Record<string, unknown>> {
  return Object.fromEntries((reply.body.stores as Record<string, unknown>[]).map((store) => [store.name as string, store]));
}

function assert400(reply: Reply, pattern: RegExp): string {
  assert.equal(reply.status, 400, JSON.stringify(reply.body));
  assert.equal(reply.body.code, 'invalid_request');
  assert.match(String(reply.body.detail), pattern);
  return String(reply.body.detail);
}

const insert = (key: string) => ({ sql: 'INSERT INTO t(k) VALUES (?)', params: [key] });

for (const kv of KV_BACKENDS) {
  describe(`store catalog (${kv} KV)`, { skip: skipUnlessFound(kvNeeds(kv)) }, () => {
    const root = makeTempDir('catalog');
    after(() => removeTempDir(root));

    it('keeps a runtime store in the KV: listed with origin and registrant, usable after a restart', async () => {
      const dir = join(root, 'restart');
      mkdirSync(dir, { recursive: true });
      let service = await startTestService({ kv, dir, stores: sqliteStores(dir, ['main']) });
      try {
        const added = await register(service, 'rt', 'sqlite', { path: 'rt.db' });
        assert.equal(added.status, 201, JSON.stringify(added.body));
        assert.equal(added.body.origin, 'runtime');
        assert.equal(added.body.registeredBy, 'anonymous');
        assert.ok(existsSync(join(dir, 'rt.db')), 'a relative path lands in the data dir');
        const entry = await service.kv.get(catalogKeys.entry('rt'));
        assert.ok(entry, 'catalog/rt is in the coordinator KV');
        const stores = listed(await call(service, 'GET', '/v1/stores'));
        assert.equal(stores.main?.origin, 'config');
        assert.equal(stores.rt?.origin, 'runtime');
        assert.deepEqual(stores.rt?.options, { path: 'rt.db' });
        assert.equal(typeof stores.rt?.registeredAt, 'string');
      } finally {
        await service.close();
      }
      service = await startTestService({ kv, dir, namespace: service.namespace, stores: sqliteStores(dir, ['main']) });
      try {
        sqliteRun(join(dir, 'rt.db'), 'CREATE TABLE IF NOT EXISTS t(k TEXT)');
        const key = `rt-${randomUUID()}`;
        const committed = await call(service, 'POST', '/v1/commits', { key, changes: { rt: [insert(key)] } });
        assert.equal(committed.status, 200, JSON.stringify(committed.body));
        assert.equal(countRows(join(dir, 'rt.db'), key), 1);
        assert.equal(listed(await call(service, 'GET', '/v1/stores')).rt?.status, 'open');
      } finally {
        await service.close();
      }
    });

    it('refuses to remove a store a committing or failed session needs (409); a removal is audited', async () => {
      const service = await startTestService({ kv, stores: [] });
      try {
        assert.equal((await register(service, 'gone', 'sqlite', { path: 'gone.db' })).status, 201);
        for (const state of ['committing', 'failed'] as const) {
          const key = `needs-${state}-${randomUUID()}`;
          const revision = await service.kv.create(
            `sessions/${key}`,
            JSON.stringify({ state, stores: ['gone'], owner: 'elsewhere', startedAt: new Date().toISOString(), log: { gone: [] } }),
          );
          const refused = await call(service, 'DELETE', '/v1/stores/gone');
          assert.equal(refused.status, 409, JSON.stringify(refused.body));
          assert.match(String(refused.body.detail), new RegExp(state));
          await service.kv.delete(`sessions/${key}`, revision);
        }
        const removed = await call(service, 'DELETE', '/v1/stores/gone');
        assert.equal(removed.status, 204, JSON.stringify(removed.body));
        const listing = await call(service, 'GET', '/v1/stores');
        assert.equal(listed(listing).gone, undefined);
        const [removal] = listing.body.removed as Record<string, unknown>[];
        assert.equal(removal?.name, 'gone');
        assert.equal(removal?.by, 'anonymous');
        assert.equal(typeof removal?.at, 'string');
        assert.equal(await service.kv.get(catalogKeys.entry('gone')), undefined);
      } finally {
        await service.dispose();
      }
    });

    it('cannot shadow a config store or remove one', async () => {
      const service = await startTestService({ kv });
      try {
        assert400(await register(service, 'main', 'sqlite', { path: 'other.db' }), /config file/);
        assert400(await call(service, 'DELETE', '/v1/stores/main'), /config file/);
      } finally {
        await service.dispose();
      }
    });

    it('/readyz lists each store up or down within 1 s; a store down at start-up does not stop the others', async () => {
      const closedPort = await freePort();
      const dir = makeTempDir('ready');
      const service = await startTestService({
        kv,
        dir,
        stores: [...sqliteStores(dir, ['main']), { name: 'cache', type: 'redis', options: { url: `redis://127.0.0.1:${closedPort}` } }],
      });
      try {
        const started = performance.now();
        const ready = await call(service, 'GET', '/readyz');
        assert.ok(performance.now() - started < 1000, `answered in ${performance.now() - started} ms`);
        assert.equal(ready.status, 200, JSON.stringify(ready.body));
        const stores = Object.fromEntries((ready.body.stores as { name: string; status: string }[]).map((s) => [s.name, s.status]));
        assert.deepEqual(stores, { cache: 'down', main: 'up' });
        sqliteRun(join(dir, 'main.db'), 'CREATE TABLE IF NOT EXISTS t(k TEXT)');
        const key = `up-${randomUUID()}`;
        assert.equal((await call(service, 'POST', '/v1/commits', { key, changes: { main: [insert(key)] } })).status, 200);
        const onDown = await call(service, 'POST', '/v1/commits', { key: `down-${randomUUID()}`, changes: { cache: [{ command: ['SET', 'a', '1'] }] } });
        assert.equal(onDown.status, 503, JSON.stringify(onDown.body));
      } finally {
        await service.dispose();
        await removeTempDir(dir);
      }
    });
  });
}

describe('confined registration (DESIGN "The boundary" 7)', () => {
  const root = makeTempDir('confine');
  const dataDir = join(root, 'data');
  const outside = join(root, 'outside');
  const extraRoot = join(root, 'extra-root');
  let service: TestService;

  before(async () => {
    for (const folder of [dataDir, outside, extraRoot]) mkdirSync(folder, { recursive: true });
    service = await startTestService({ kv: 'sqlite', dir: dataDir, stores: sqliteStores(dataDir, ['a']), storeRoots: [extraRoot] });
  });
  after(async () => {
    await service?.close();
    await removeTempDir(root);
  });

  it('refuses x/../evil.db and creates nothing', async () => {
    assert400(await register(service, 'evil', 'sqlite', { path: 'x/../evil.db' }), /options\.path/);
    assert.ok(!existsSync(join(dataDir, 'evil.db')) && !existsSync(join(root, 'evil.db')) && !existsSync('evil.db'));
  });

  it('refuses a path outside with one message whether or not it exists', async () => {
    writeFileSync(join(outside, 'exists.db'), '');
    const existing = assert400(await register(service, 'out1', 'sqlite', { path: join(outside, 'exists.db') }), /inside the data dir/);
    const missing = assert400(await register(service, 'out2', 'sqlite', { path: join(outside, 'missing.db') }), /inside the data dir/);
    assert.equal(existing.replace('out1', 'X'), missing.replace('out2', 'X'));
    const relative = assert400(await register(service, 'out3', 'sqlite', { path: '../outside/missing.db' }), /options\.path/);
    assert.ok(relative.length > 0);
    assert.ok(!existsSync(join(outside, 'missing.db')));
    assert.equal(statSync(join(outside, 'exists.db')).size, 0);
  });

  it('refuses an existing file that is not a SQLite database (an empty one too) and leaves it as it was', async () => {
    writeFileSync(join(dataDir, 'empty.db'), '');
    writeFileSync(join(dataDir, 'notes.txt'), 'hello');
    assert400(await register(service, 'empty', 'sqlite', { path: 'empty.db' }), /not a SQLite database/);
    assert400(await register(service, 'notes', 'sqlite', { path: 'notes.txt' }), /not a SQLite database/);
    assert.equal(statSync(join(dataDir, 'empty.db')).size, 0);
    assert.equal(readFileSync(join(dataDir, 'notes.txt'), 'utf8'), 'hello');
  });

  it('resolves a relative path against the data dir, not the working directory', async () => {
    const name = `rel${randomUUID().slice(0, 8)}`;
    assert.equal((await register(service, name, 'sqlite', { path: `sub/${name}.db` })).status, 201);
    assert.ok(existsSync(join(dataDir, 'sub', `${name}.db`)));
    assert.ok(!existsSync(join(process.cwd(), 'sub', `${name}.db`)));
  });

  it("refuses another store's file and the coordinator KV's own file", async () => {
    assert400(await register(service, 'twin', 'sqlite', { path: join(dataDir, 'a.db') }), /another store/);
    assert400(await register(service, 'twin', 'sqlite', { path: 'a.db-wal' }), /another store/);
    assert400(await register(service, 'kvfile', 'sqlite', { path: 'coordinator.db' }), /commitd's own files/);
    assert400(await register(service, 'kvfile', 'sqlite', { path: join(dataDir, 'coordinator.db') }), /commitd's own files/);
  });

  it('refuses a symlink escape, to a folder or a dangling file link, and creates nothing outside', async () => {
    symlinkSync(outside, join(dataDir, 'link'));
    symlinkSync(join(outside, 'target.db'), join(dataDir, 'dangling.db'));
    assert400(await register(service, 'esc1', 'sqlite', { path: 'link/escaped.db' }), /inside the data dir/);
    assert400(await register(service, 'esc2', 'sqlite', { path: 'dangling.db' }), /inside the data dir/);
    assert.ok(!existsSync(join(outside, 'escaped.db')) && !existsSync(join(outside, 'target.db')));
  });

  it('accepts a path inside a storeRoots folder', async () => {
    assert.equal((await register(service, 'rooted', 'sqlite', { path: join(extraRoot, 'rooted.db') })).status, 201);
  });

  it('refuses malformed redis and etcd options, and an unreachable server, without adding the store', async () => {
    assert400(await register(service, 'r1', 'redis', { url: 'notaurl' }), /redis:\/\//);
    assert400(await register(service, 'e1', 'etcd', { prefix: 'p/', endpoints: ['not a url'] }), /not an endpoint/);
    const closedPort = await freePort();
    const started = performance.now();
    assert400(await register(service, 'r2', 'redis', { url: `redis://127.0.0.1:${closedPort}` }), /cannot be reached/);
    assert.ok(performance.now() - started < 10_000);
    const stores = listed(await call(service, 'GET', '/v1/stores'));
    for (const name of ['r1', 'e1', 'r2']) assert.equal(stores[name], undefined);
    assert.equal(await service.kv.get(catalogKeys.entry('r2')), undefined);
  });

  it('takes option values from the environment ({"env"}) and never stores a credential', async () => {
    const variable = `COMMITD_TEST_PATH_${randomUUID().slice(0, 8).toUpperCase()}`;
    process.env[variable] = join(dataDir, 'from-env.db');
    try {
      const added = await register(service, 'fromenv', 'sqlite', { path: { env: variable } });
      assert.equal(added.status, 201, JSON.stringify(added.body));
      assert.ok(existsSync(join(dataDir, 'from-env.db')));
      assert.deepEqual(listed(await call(service, 'GET', '/v1/stores')).fromenv?.options, { path: { env: variable } });
      const stored = await service.kv.get(catalogKeys.entry('fromenv'));
      assert.ok(stored && !stored.value.includes('from-env.db'), 'the KV holds the reference, not the value');
    } finally {
      delete process.env[variable];
    }
    assert400(await register(service, 'unset', 'sqlite', { path: { env: 'COMMITD_TEST_SURELY_UNSET' } }), /COMMITD_TEST_SURELY_UNSET is not set/);
    assert400(await register(service, 'secret', 'redis', { url: 'redis://:hunter2@127.0.0.1:1' }), /\{"env": "NAME"\}/);
  });

  it('redacts what looks like a credential in listed options', () => {
    assert.deepEqual(
      redactOptions({
        connectionString: 'postgres://app:hunter2@db:5432/orders',
        url: 'redis://:hunter2@cache:6379',
        dsn: 'host=db password=hunter2 dbname=x',
        headers: { authorization: 'Bearer abc' },
        password: 'pw',
        tokenFile: { env: 'TOKEN' },
        path: 'a.db',
      }),
      {
        connectionString: 'postgres://app:[redacted]@db:5432/orders',
        url: 'redis://:[redacted]@cache:6379',
        dsn: 'host=db password=[redacted] dbname=x',
        headers: { authorization: '[redacted]' },
        password: '[redacted]',
        tokenFile: { env: 'TOKEN' },
        path: 'a.db',
      },
    );
  });
});

/**
 * DESIGN "Session lifecycle", step 3: a change a store rejects at `/changes` answers an error
 * naming the change (`409 store_conflict` with `change: i` and `changes[i]` in the detail, or
 * a `400`), and leaves the session exactly as it was before that request — earlier changes
 * stay in the store, in commitd's log and in the session hash, the session stays open, the
 * next good change and the commit succeed, with the session ID of a run that never sent the
 * bad request. One request is all or nothing. Over HTTP, against sqlite, PostgreSQL (plain
 * and two-phase: a savepoint per request), MySQL/MariaDB (plain and XA: a savepoint per
 * request; a deadlock, which rolls back the whole transaction, rebuilt by reopening and
 * re-applying) and Redis (buffered commands dropped).
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { LightMyRequestResponse } from 'fastify';
import { Redis } from 'ioredis';
import { sessionIdOfChanges } from '../src/core/session-id.ts';
import { mariadbBinary, mariadbInstallDb, mysqlRows, startMariadb, type MariadbServer } from './harness/mariadb.ts';
import { postgresBinDir, startPostgres, type PostgresServer } from './harness/postgres.ts';
import { redisBinary, startRedis, type RedisServer } from './harness/redis.ts';
import { skipUnlessFound } from './harness/require.ts';
import { postgresRows, sqliteRows } from './support/rows.ts';
import { startTestService, type TestService } from './support/service.ts';
import { waitFor } from './support/wait.ts';

type Body = Record<string, unknown>;

function client(service: () => TestService) {
  const post = (url: string, body: unknown): Promise<LightMyRequestResponse> =>
    service().app.inject({ method: 'POST', url, headers: { 'content-type': 'application/json' }, payload: JSON.stringify(body) });
  const changes = (key: string, store: string, list: unknown[]) => post(`/v1/sessions/${key}/changes`, { store, changes: list });
  return { post, changes };
}

function problemOf(response: LightMyRequestResponse, status: number, code: string): Body {
  assert.equal(response.statusCode, status, response.body);
  const problem = JSON.parse(response.body) as Body;
  assert.equal(problem.code, code, response.body);
  return problem;
}

/**
 * The scenario every store runs: good change A; a request [B, bad] refused naming index 1;
 * good change D; commit. The answer's session ID is that of a session of A and D only.
 */
async function rejectedRequestKeepsSession(
  service: () => TestService,
  opts: { key: string; store: string; a: unknown; b: unknown; bad: unknown; d: unknown; status: number; code: string },
): Promise<string> {
  const { post, changes } = client(service);
  const { key, store } = opts;
  assert.equal((await post('/v1/sessions', { key, stores: [store] })).statusCode, 201);
  assert.equal((await changes(key, store, [opts.a])).statusCode, 200);
  const refused = problemOf(await changes(key, store, [opts.b, opts.bad]), opts.status, opts.code);
  if (opts.code === 'store_conflict') {
    assert.equal(refused.change, 1, 'the member counts the request’s changes from 0');
    assert.match(String(refused.detail), /changes\[1\]/, 'the detail names the same index');
    assert.equal(refused.store, store);
  }
  const view = await service().app.inject({ method: 'GET', url: `/v1/sessions/${key}` });
  assert.equal(view.statusCode, 200, 'the session stays open');
  assert.equal(JSON.parse(view.body).state, 'active');
  assert.equal((await changes(key, store, [opts.d])).statusCode, 200, 'the next good change is taken');
  const committed = await post(`/v1/sessions/${key}/commit`, {});
  assert.equal(committed.statusCode, 200, committed.body);
  const sessionId = JSON.parse(committed.body).sessionId as string;
  assert.equal(sessionId, sessionIdOfChanges({ [store]: [opts.a, opts.d] }), 'the same ID as a session that never sent the bad request');
  return sessionId;
}

describe('a rejected change does not end the session: sqlite', () => {
  let service: TestService;
  const rows = (sql: string) => sqliteRows<{ id: number }>(join(service.dir, 'main.db'), sql);
  const insert = (id: number) => ({ sql: 'INSERT INTO rw (id) VALUES (?)', params: [id] });

  before(async () => {
    service = await startTestService({ kv: 'sqlite' });
    const created = await client(() => service).post('/v1/commits', {
      key: 'rw-schema',
      changes: { main: [{ sql: 'CREATE TABLE rw (id INTEGER PRIMARY KEY)' }] },
    });
    assert.equal(created.statusCode, 200, created.body);
  });
  after(async () => service?.dispose());

  it('a statement that does not compile: 409 naming it, the request’s other change dropped, the session commits', async () => {
    await rejectedRequestKeepsSession(() => service, {
      key: 'rw-sqlite-1',
      store: 'main',
      a: insert(1),
      b: insert(2),
      bad: { sql: 'INSERT INTO nowhere VALUES (1)' },
      d: insert(4),
      status: 409,
      code: 'store_conflict',
    });
    assert.deepEqual(
      rows('SELECT id FROM rw ORDER BY id').map((r) => r.id),
      [1, 4],
    );
  });

  it('a statement commitd does not allow: 409, the session goes on', async () => {
    await rejectedRequestKeepsSession(() => service, {
      key: 'rw-sqlite-2',
      store: 'main',
      a: insert(11),
      b: insert(12),
      bad: { sql: 'PRAGMA journal_mode = DELETE' },
      d: insert(14),
      status: 409,
      code: 'store_conflict',
    });
    assert.deepEqual(
      rows('SELECT id FROM rw WHERE id > 10 ORDER BY id').map((r) => r.id),
      [11, 14],
    );
  });

  it('a rejection found only at commit (prepare) still cancels the session', async () => {
    const { post, changes } = client(() => service);
    assert.equal((await post('/v1/sessions', { key: 'rw-sqlite-3', stores: ['main'] })).statusCode, 201);
    assert.equal((await changes('rw-sqlite-3', 'main', [insert(21), insert(21)])).statusCode, 200);
    problemOf(await post('/v1/sessions/rw-sqlite-3/commit', {}), 409, 'store_conflict');
    assert.equal((await service.app.inject({ method: 'GET', url: '/v1/sessions/rw-sqlite-3' })).statusCode, 404);
    assert.deepEqual(rows('SELECT id FROM rw WHERE id = 21'), []);
  });

  it('a one-shot commit with a rejected change is cancelled as a whole', async () => {
    const { post } = client(() => service);
    problemOf(
      await post('/v1/commits', { key: 'rw-sqlite-4', changes: { main: [insert(31), { sql: 'INSERT INTO nowhere VALUES (1)' }] } }),
      409,
      'store_conflict',
    );
    assert.deepEqual(rows('SELECT id FROM rw WHERE id = 31'), []);
    const retried = await post('/v1/commits', { key: 'rw-sqlite-4', changes: { main: [insert(31)] } });
    assert.equal(retried.statusCode, 200, retried.body);
  });
});

const PG_MODES = [
  { store: 'plain', database: 'rewind_plain', twoPhase: false },
  { store: 'twophase', database: 'rewind_twophase', twoPhase: true },
] as const;

describe('a rejected change does not end the session: postgres', { skip: skipUnlessFound({ postgres: postgresBinDir() }) }, () => {
  let server: PostgresServer;
  let service: TestService;
  const urlOf = (database: string) => server.connectionString.replace(/\/postgres$/, `/${database}`);
  const ids = async (database: string, from: number) =>
    (await postgresRows<{ id: number }>(urlOf(database), 'SELECT id FROM items WHERE id >= $1 AND id < $2 ORDER BY id', [from, from + 100])).map((r) => r.id);
  const insert = (id: number) => ({ sql: 'INSERT INTO items (id) VALUES ($1)', params: [id] });

  before(async () => {
    server = await startPostgres({ twoPhase: true });
    for (const mode of PG_MODES) {
      await postgresRows(server.connectionString, `CREATE DATABASE ${mode.database}`);
      await postgresRows(urlOf(mode.database), 'CREATE TABLE items (id INTEGER PRIMARY KEY)');
    }
    service = await startTestService({
      kv: 'sqlite',
      stores: PG_MODES.map((mode) => ({ name: mode.store, type: 'postgres', options: { connectionString: urlOf(mode.database), twoPhase: mode.twoPhase } })),
    });
  });
  after(async () => {
    await service?.dispose();
    await server?.cleanup();
  });

  for (const mode of PG_MODES) {
    it(`${mode.store}: a unique violation rolls back to the request's savepoint; earlier and later changes commit`, async () => {
      await rejectedRequestKeepsSession(() => service, {
        key: `rw-${mode.store}-1`,
        store: mode.store,
        a: insert(100),
        b: insert(102),
        bad: insert(100),
        d: insert(104),
        status: 409,
        code: 'store_conflict',
      });
      assert.deepEqual(await ids(mode.database, 100), [100, 104]);
    });

    it(`${mode.store}: a change refused before it runs (400) and a transaction statement (409) leave the session open`, async () => {
      const { post, changes } = client(() => service);
      const key = `rw-${mode.store}-2`;
      assert.equal((await post('/v1/sessions', { key, stores: [mode.store] })).statusCode, 201);
      assert.equal((await changes(key, mode.store, [insert(200)])).statusCode, 200);
      problemOf(await changes(key, mode.store, [insert(201), { sql: 'DELETE FROM commitd_sessions' }]), 400, 'invalid_request');
      problemOf(await changes(key, mode.store, [insert(202), { sql: 'COMMIT' }]), 409, 'store_conflict');
      problemOf(await changes(key, mode.store, [{ sql: 'SELECT 1/0' }]), 409, 'store_conflict');
      assert.equal((await changes(key, mode.store, [insert(203)])).statusCode, 200);
      const committed = await post(`/v1/sessions/${key}/commit`, {});
      assert.equal(committed.statusCode, 200, committed.body);
      assert.equal(JSON.parse(committed.body).sessionId, sessionIdOfChanges({ [mode.store]: [insert(200), insert(203)] }));
      assert.deepEqual(await ids(mode.database, 200), [200, 203]);
    });
  }
});

const MYSQL_MODES = [
  { store: 'myplain', xa: false },
  { store: 'myxa', xa: true },
] as const;

describe('a rejected change does not end the session: mysql', {
  skip: skipUnlessFound({ mariadbd: mariadbBinary(), 'mariadb-install-db': mariadbInstallDb() }),
}, () => {
  let server: MariadbServer;
  let service: TestService;
  const urls = new Map<string, string>();
  const urlOf = (store: string) => urls.get(store) as string;
  const ids = async (store: string, from: number) =>
    (await mysqlRows<{ id: number }>(urlOf(store), 'SELECT id FROM items WHERE id >= ? AND id < ? ORDER BY id', [from, from + 100])).map((r) => r.id);
  const insert = (id: number) => ({ sql: 'INSERT INTO items (id) VALUES (?)', params: [id] });

  before(async () => {
    server = await startMariadb();
    for (const mode of MYSQL_MODES) {
      const url = await server.createDatabase(`rewind_${mode.store}`);
      urls.set(mode.store, url);
      await mysqlRows(url, 'CREATE TABLE items (id INT PRIMARY KEY) ENGINE=InnoDB');
    }
    service = await startTestService({
      kv: 'sqlite',
      stores: MYSQL_MODES.map((mode) => ({ name: mode.store, type: 'mysql', options: { connectionString: urlOf(mode.store), xa: mode.xa } })),
    });
  });
  after(async () => {
    await service?.dispose();
    await server?.cleanup();
  });

  for (const mode of MYSQL_MODES) {
    it(`${mode.store}: a duplicate key rolls back to the request's savepoint; earlier and later changes commit`, async () => {
      await rejectedRequestKeepsSession(() => service, {
        key: `rw-${mode.store}-1`,
        store: mode.store,
        a: insert(100),
        b: insert(102),
        bad: insert(100),
        d: insert(104),
        status: 409,
        code: 'store_conflict',
      });
      assert.deepEqual(await ids(mode.store, 100), [100, 104]);
    });

    it(`${mode.store}: refused changes (400) and a failing statement (409) leave the session open`, async () => {
      const { post, changes } = client(() => service);
      const key = `rw-${mode.store}-2`;
      assert.equal((await post('/v1/sessions', { key, stores: [mode.store] })).statusCode, 201);
      assert.equal((await changes(key, mode.store, [insert(200)])).statusCode, 200);
      problemOf(await changes(key, mode.store, [insert(201), { sql: 'DELETE FROM commitd_sessions' }]), 400, 'invalid_request');
      problemOf(await changes(key, mode.store, [insert(202), { sql: 'ROLLBACK TO SAVEPOINT commitd_request' }]), 400, 'invalid_request');
      problemOf(await changes(key, mode.store, [insert(203), { sql: 'INSERT INTO nowhere VALUES (1)' }]), 409, 'store_conflict');
      assert.equal((await changes(key, mode.store, [insert(204)])).statusCode, 200);
      const committed = await post(`/v1/sessions/${key}/commit`, {});
      assert.equal(committed.statusCode, 200, committed.body);
      assert.equal(JSON.parse(committed.body).sessionId, sessionIdOfChanges({ [mode.store]: [insert(200), insert(204)] }));
      assert.deepEqual(await ids(mode.store, 200), [200, 204]);
    });

    it(`${mode.store}: a deadlock rolls back the whole transaction; commitd rebuilds it and the session commits`, async () => {
      const { post, changes } = client(() => service);
      const [k1, k2] = [`rw-${mode.store}-3a`, `rw-${mode.store}-3b`];
      for (const key of [k1, k2]) assert.equal((await post('/v1/sessions', { key, stores: [mode.store] })).statusCode, 201);
      assert.equal((await changes(k1, mode.store, [insert(300)])).statusCode, 200);
      assert.equal((await changes(k2, mode.store, [insert(301)])).statusCode, 200);
      // Each waits for the other's row: InnoDB picks a victim and rolls back its whole transaction.
      const crossed = await Promise.all([changes(k1, mode.store, [insert(301)]), changes(k2, mode.store, [insert(300)])]);
      const statuses = crossed.map((r) => r.statusCode).sort();
      assert.equal(statuses.includes(503) || statuses.includes(409), true, `one of them fails: ${statuses}`);
      const victim = crossed[0]?.statusCode === 200 ? k2 : k1;
      const survivor = victim === k1 ? k2 : k1;
      // The survivor holds both rows now; cancel it so that the victim's rebuilt transaction can take its own.
      const cancelled = await post(`/v1/sessions/${survivor}/cancel`, {});
      assert.equal(cancelled.statusCode, 200, cancelled.body);
      const view = await service.app.inject({ method: 'GET', url: `/v1/sessions/${victim}` });
      assert.equal(JSON.parse(view.body).state, 'active', 'the victim session stays open');
      const own = victim === k1 ? 300 : 301;
      let next: LightMyRequestResponse | undefined;
      await waitFor('the rebuilt session to take a change', async () => {
        next = await changes(victim, mode.store, [insert(310)]);
        return next.statusCode === 503 ? undefined : true;
      });
      assert.equal(next?.statusCode, 200, next?.body);
      const committed = await post(`/v1/sessions/${victim}/commit`, {});
      assert.equal(committed.statusCode, 200, committed.body);
      assert.equal(JSON.parse(committed.body).sessionId, sessionIdOfChanges({ [mode.store]: [insert(own), insert(310)] }));
      assert.deepEqual(await ids(mode.store, 300), [own, 310]);
    });
  }
});

describe('a rejected change does not end the session: redis', { skip: skipUnlessFound({ 'redis-server': redisBinary() }) }, () => {
  let server: RedisServer;
  let service: TestService;
  let redis: Redis;

  before(async () => {
    server = await startRedis();
    redis = new Redis(server.url, { maxRetriesPerRequest: 1 });
    service = await startTestService({ kv: 'sqlite', stores: [{ name: 'cache', type: 'redis', options: { url: server.url } }] });
  });
  after(async () => {
    await service?.dispose();
    redis?.disconnect();
    await server?.cleanup();
  });

  it('a command outside the allowlist (400) drops the request’s commands; the session commits the others', async () => {
    const set = (key: string) => ({ command: ['SET', key, 'v'] });
    await rejectedRequestKeepsSession(() => service, {
      key: 'rw-redis-1',
      store: 'cache',
      a: set('rw:a'),
      b: set('rw:b'),
      bad: { command: ['FLUSHALL'] },
      d: set('rw:d'),
      status: 400,
      code: 'invalid_request',
    });
    assert.deepEqual(await redis.mget('rw:a', 'rw:b', 'rw:d'), ['v', null, 'v']);
  });
});

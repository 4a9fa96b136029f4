/**
 * docs/recovery.md, gaps 1 and 2 of two-phase PostgreSQL, closed:
 *
 * 1. A resumed `active` session never commits a transaction a dead instance prepared before
 *    its commit point: the resumed session begins its stores afresh (an `active` record means
 *    nothing is decided), the orphan is rolled back, and the commit carries the re-sent
 *    changes only, with their session ID.
 * 2. `resolveOrphans` leaves alone a prepared transaction whose session is still in flight —
 *    a one-shot between PREPARE TRANSACTION and its commit point has no session record yet —
 *    because that session's connection holds the gid's in-flight lock; the session then
 *    commits it. A transaction whose preparer died (its connection, and the lock, gone) is
 *    still resolved.
 *
 * The state a dead instance leaves (its `active` record, its prepared transaction, its
 * connection gone) is made with the real KV, a real store session and pg_terminate_backend.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { LightMyRequestResponse } from 'fastify';
import { pino } from 'pino';
import { keyBytes, toHex } from '../src/core/keys.ts';
import { sessionIdOfChanges, storeId } from '../src/core/session-id.ts';
import { recordKeys } from '../src/coordinator/records.ts';
import type { Store, StoreSession } from '../src/stores/api.ts';
import { postgresStoreType, type PostgresChange } from '../src/stores/postgres/store.ts';
import { postgresBinDir, startPostgres, type PostgresServer } from './harness/postgres.ts';
import { skipUnlessFound } from './harness/require.ts';
import { postgresRows } from './support/rows.ts';
import { startTestService, type TestService } from './support/service.ts';

describe('two-phase postgres: recovery gaps 1 and 2', { skip: skipUnlessFound({ postgres: postgresBinDir() }) }, () => {
  let server: PostgresServer;
  let service: TestService;
  /** Stores standing for other instances ("dead", "alive"), each on a pool of its own. */
  const others: Store<PostgresChange>[] = [];
  const url = () => server.connectionString.replace(/\/postgres$/, '/gaps');
  const insert = (id: number): PostgresChange => ({ sql: 'INSERT INTO items (id) VALUES ($1)', params: [id] });
  const ids = async (from: number) =>
    (await postgresRows<{ id: number }>(url(), 'SELECT id FROM items WHERE id >= $1 AND id < $2 ORDER BY id', [from, from + 100])).map((r) => r.id);
  const prepared = async () => (await postgresRows<{ gid: string }>(url(), 'SELECT gid FROM pg_prepared_xacts')).map((r) => r.gid);
  const marker = async (key: string) =>
    (await postgresRows<{ session_id: string }>(url(), 'SELECT session_id FROM commitd_sessions WHERE key = $1', [key]))[0]?.session_id;
  const post = (path: string, body: unknown): Promise<LightMyRequestResponse> =>
    service.app.inject({ method: 'POST', url: path, headers: { 'content-type': 'application/json' }, payload: JSON.stringify(body) });

  /** Another instance's store `tp` (same database, same marker table): its connections are named `commitd/<as>`. */
  async function otherInstance(as: string): Promise<Store<PostgresChange>> {
    const store = await postgresStoreType.create(
      { connectionString: url(), twoPhase: true },
      { name: as, logger: pino({ level: 'silent' }), dataDir: '.', retentionSeconds: 60 },
    );
    others.push(store);
    return store;
  }

  /** A session of another instance, begun, with `changes` applied and prepared (PREPARE TRANSACTION done). */
  async function preparedElsewhere(store: Store<PostgresChange>, key: string, changes: PostgresChange[]): Promise<StoreSession<PostgresChange>> {
    const session = store.session();
    await session.begin(keyBytes(key));
    for (const change of changes) await session.apply(change);
    await session.prepare(keyBytes(key));
    return session;
  }

  /** That instance's process dies: the server ends its connections; prepared transactions stay. */
  async function killConnections(as: string): Promise<void> {
    await postgresRows(server.connectionString, 'SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1', [`commitd/${as}`]);
  }

  before(async () => {
    server = await startPostgres({ twoPhase: true });
    await postgresRows(server.connectionString, 'CREATE DATABASE gaps');
    await postgresRows(url(), 'CREATE TABLE items (id INTEGER PRIMARY KEY)');
    service = await startTestService({ kv: 'sqlite', stores: [{ name: 'tp', type: 'postgres', options: { connectionString: url(), twoPhase: true } }] });
  });
  after(async () => {
    await service?.dispose();
    for (const store of others) void store.close();
    await server?.cleanup();
  });

  it('gap 1: a resumed active session does not commit what the dead instance prepared', async () => {
    const key = 'gap1-resume';
    const dead = await otherInstance('dead1');
    // The dead instance began `key`, sent insert(1), and crashed inside its commit: after
    // PREPARE TRANSACTION, before its commit point. Its record says `active`.
    await preparedElsewhere(dead, key, [insert(1)]);
    await killConnections('dead1');
    await service.kv.create(
      recordKeys.session(key),
      JSON.stringify({ state: 'active', stores: ['tp'], owner: 'instance-that-died', startedAt: new Date().toISOString() }),
    );
    assert.equal((await prepared()).length, 1);

    // The worker retries: begin resumes the session (recovery: true, empty), re-sends other changes, commits.
    const begun = await post('/v1/sessions', { key, stores: ['tp'] });
    assert.equal(begun.statusCode, 200, begun.body);
    assert.equal(JSON.parse(begun.body).recovery, true);
    assert.equal((await post(`/v1/sessions/${key}/changes`, { store: 'tp', changes: [insert(2)] })).statusCode, 200);
    const committed = await post(`/v1/sessions/${key}/commit`, {});
    assert.equal(committed.statusCode, 200, committed.body);
    const answer = JSON.parse(committed.body) as { sessionId: string; stores: Record<string, string> };
    assert.equal(answer.sessionId, sessionIdOfChanges({ tp: [insert(2)] }));
    assert.equal(answer.stores.tp, toHex(storeId([insert(2)])), 'the store ID is that of the changes the session committed');
    assert.deepEqual(await ids(0), [2], 'the dead instance’s prepared insert never commits');
    assert.equal(await marker(key), toHex(storeId([insert(2)])));
    assert.deepEqual(await prepared(), []);
  });

  it('gap 1: an owner that only paused (lease gone, connection alive) keeps its prepared transaction; the resumed begin waits', async () => {
    const key = 'gap1-paused';
    const paused = await otherInstance('paused1');
    const session = await preparedElsewhere(paused, key, [insert(300)]);
    await service.kv.create(
      recordKeys.session(key),
      JSON.stringify({ state: 'active', stores: ['tp'], owner: 'instance-that-paused', startedAt: new Date().toISOString() }),
    );
    const busy = await post('/v1/sessions', { key, stores: ['tp'] });
    assert.equal(busy.statusCode, 409, busy.body);
    assert.equal(JSON.parse(busy.body).code, 'session_busy');
    assert.equal((await prepared()).length, 1, 'neither committed nor rolled back under the paused owner');
    assert.deepEqual(await ids(300), []);
    // The owner resumes; its commit point is refused (the record is gone), so it rolls back.
    await session.cancel();
    assert.deepEqual(await prepared(), []);
    const begun = await post('/v1/sessions', { key, stores: ['tp'] });
    assert.equal(begun.statusCode, 201, begun.body);
    assert.equal((await post(`/v1/sessions/${key}/changes`, { store: 'tp', changes: [insert(301)] })).statusCode, 200);
    const committed = await post(`/v1/sessions/${key}/commit`, {});
    assert.equal(committed.statusCode, 200, committed.body);
    assert.equal(JSON.parse(committed.body).sessionId, sessionIdOfChanges({ tp: [insert(301)] }));
    assert.deepEqual(await ids(300), [301]);
  });

  it('gap 2: a recovery pass keeps a live one-shot’s prepared transaction; the one-shot then commits it', async () => {
    const key = 'gap2-live';
    const alive = await otherInstance('alive2');
    // Another instance's one-shot, between PREPARE TRANSACTION and its commit point: no record anywhere.
    const session = await preparedElsewhere(alive, key, [insert(10)]);
    await service.coordinator.recoverOnce();
    assert.equal((await prepared()).length, 1, 'the in-flight transaction is kept');
    // Its commit point written, the one-shot commits its prepared transaction.
    const id = await session.commit(keyBytes(key));
    assert.equal(toHex(id), toHex(storeId([insert(10)])));
    assert.deepEqual(await ids(10), [10]);
    assert.equal(await marker(key), toHex(id));
  });

  it('gap 2: a prepared transaction whose preparer died (connection gone) is still rolled back', async () => {
    const key = 'gap2-dead';
    const dead = await otherInstance('dead2');
    await preparedElsewhere(dead, key, [insert(20)]);
    await killConnections('dead2');
    await service.coordinator.recoverOnce();
    assert.deepEqual(await prepared(), []);
    assert.deepEqual(await ids(20), []);
    const retried = await post('/v1/commits', { key, changes: { tp: [insert(21)] } });
    assert.equal(retried.statusCode, 200, retried.body);
    assert.deepEqual(await ids(20), [21]);
  });

  it('a worker change cannot release the in-flight lock', async () => {
    const refused = await post('/v1/commits', { key: 'gap2-unlock', changes: { tp: [{ sql: 'SELECT pg_advisory_unlock_all()' }] } });
    assert.equal(refused.statusCode, 400, refused.body);
    assert.equal(JSON.parse(refused.body).rule, 'denied-function');
  });
});

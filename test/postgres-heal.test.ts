/**
 * DESIGN "Session lifecycle", step 3, and docs/recovery.md: a PostgreSQL connection lost
 * before the commit point heals. The backend of an open session is killed
 * (`pg_terminate_backend`) or the server restarts, between requests or while a request
 * runs; commitd opens a new connection and applies the session's logged changes again. The
 * worker sees at most one `503` (for the request in flight), the session goes on and commits
 * with the session ID of an undisturbed run, every change applied once. Plain and two-phase
 * mode, over HTTP, on a throwaway server. In two-phase mode a connection lost after PREPARE
 * TRANSACTION needs no healing: the prepared transaction survives it.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { LightMyRequestResponse } from 'fastify';
import { sessionIdOfChanges } from '../src/core/session-id.ts';
import { postgresBinDir, startPostgres, type PostgresServer } from './harness/postgres.ts';
import { skipUnlessFound } from './harness/require.ts';
import { postgresRows } from './support/rows.ts';
import { startTestService, type TestService } from './support/service.ts';
import { waitFor } from './support/wait.ts';

const MODES = [
  { store: 'plain', database: 'heal_plain', twoPhase: false },
  { store: 'twophase', database: 'heal_twophase', twoPhase: true },
] as const;

describe('postgres: lost connections heal', { skip: skipUnlessFound({ postgres: postgresBinDir() }) }, () => {
  let server: PostgresServer;
  let service: TestService;
  const urlOf = (database: string) => server.connectionString.replace(/\/postgres$/, `/${database}`);
  const insert = (id: number) => ({ sql: 'INSERT INTO items (id) VALUES ($1)', params: [id] });
  const ids = async (database: string, from: number) =>
    (await postgresRows<{ id: number }>(urlOf(database), 'SELECT id FROM items WHERE id >= $1 AND id < $2 ORDER BY id', [from, from + 100])).map((r) => r.id);
  const post = (url: string, body: unknown): Promise<LightMyRequestResponse> =>
    service.app.inject({ method: 'POST', url, headers: { 'content-type': 'application/json' }, payload: JSON.stringify(body) });

  /** Sends a request as a worker would: once more after a 503. Returns the final answer and how many 503s it saw. */
  async function send(url: string, body: unknown): Promise<{ response: LightMyRequestResponse; unavailable: number }> {
    let unavailable = 0;
    for (;;) {
      const response = await post(url, body);
      if (response.statusCode !== 503 || unavailable >= 3) return { response, unavailable };
      unavailable += 1;
    }
  }

  /** Kills the backends of a store's sessions (commitd names its connections `commitd/<store>`). */
  async function terminate(store: string, state?: string): Promise<number> {
    const rows = await postgresRows<{ pid: number }>(
      server.connectionString,
      `SELECT pid FROM pg_stat_activity WHERE application_name = $1 ${state ? 'AND state = $2' : ''}`,
      state ? [`commitd/${store}`, state] : [`commitd/${store}`],
    );
    for (const { pid } of rows) await postgresRows(server.connectionString, 'SELECT pg_terminate_backend($1)', [pid]);
    return rows.length;
  }

  before(async () => {
    server = await startPostgres({ twoPhase: true });
    for (const mode of MODES) {
      await postgresRows(server.connectionString, `CREATE DATABASE ${mode.database}`);
      await postgresRows(urlOf(mode.database), 'CREATE TABLE items (id INTEGER PRIMARY KEY)');
    }
    service = await startTestService({
      kv: 'sqlite',
      stores: MODES.map((mode) => ({ name: mode.store, type: 'postgres', options: { connectionString: urlOf(mode.database), twoPhase: mode.twoPhase } })),
    });
  });
  after(async () => {
    await service?.dispose();
    await server?.cleanup();
  });

  /** begin, A, (disturb), B, C, commit; asserts the ID and the rows of an undisturbed run. */
  async function healedSession(mode: (typeof MODES)[number], key: string, base: number, disturb: () => Promise<void>): Promise<number> {
    const { store } = mode;
    assert.equal((await post('/v1/sessions', { key, stores: [store] })).statusCode, 201);
    assert.equal((await post(`/v1/sessions/${key}/changes`, { store, changes: [insert(base)] })).statusCode, 200);
    await disturb();
    const second = await send(`/v1/sessions/${key}/changes`, { store, changes: [insert(base + 1)] });
    assert.equal(second.response.statusCode, 200, second.response.body);
    const third = await send(`/v1/sessions/${key}/changes`, { store, changes: [insert(base + 2)] });
    assert.equal(third.response.statusCode, 200, third.response.body);
    const committed = await send(`/v1/sessions/${key}/commit`, {});
    assert.equal(committed.response.statusCode, 200, committed.response.body);
    assert.equal(
      JSON.parse(committed.response.body).sessionId,
      sessionIdOfChanges({ [store]: [insert(base), insert(base + 1), insert(base + 2)] }),
      'the session ID of an undisturbed run',
    );
    assert.deepEqual(await ids(mode.database, base), [base, base + 1, base + 2], 'every change applied once');
    return second.unavailable + third.unavailable + committed.unavailable;
  }

  for (const mode of MODES) {
    describe(`${mode.store} mode`, () => {
      it('pg_terminate_backend between requests: the session heals, at most one 503', async () => {
        const seen = await healedSession(mode, `heal-${mode.store}-kill`, 100, async () => {
          assert.equal(await terminate(mode.store, 'idle in transaction'), 1, 'the session holds one connection, idle in its transaction');
        });
        assert.ok(seen <= 1, `the worker saw ${seen} 503s`);
      });

      it('a server restart between requests: the session heals, at most one 503', async () => {
        const seen = await healedSession(mode, `heal-${mode.store}-restart`, 200, () => server.restart());
        assert.ok(seen <= 1, `the worker saw ${seen} 503s`);
      });

      it('pg_terminate_backend while a request runs: the request is run again on a new connection', async () => {
        const { store } = mode;
        const key = `heal-${mode.store}-inflight`;
        const slow = { sql: 'SELECT pg_sleep(1), $1::int AS n', params: [1] };
        assert.equal((await post('/v1/sessions', { key, stores: [store] })).statusCode, 201);
        assert.equal((await post(`/v1/sessions/${key}/changes`, { store, changes: [insert(300)] })).statusCode, 200);
        const inFlight = send(`/v1/sessions/${key}/changes`, { store, changes: [insert(301), slow] });
        await waitFor('the slow change to run', async () =>
          (
            await postgresRows(server.connectionString, "SELECT 1 FROM pg_stat_activity WHERE application_name = $1 AND query LIKE 'SELECT pg_sleep%'", [
              `commitd/${store}`,
            ])
          ).length > 0
            ? true
            : undefined,
        );
        await terminate(store, 'active');
        const { response, unavailable } = await inFlight;
        assert.equal(response.statusCode, 200, response.body);
        assert.ok(unavailable <= 1, `the worker saw ${unavailable} 503s`);
        const committed = await send(`/v1/sessions/${key}/commit`, {});
        assert.equal(committed.response.statusCode, 200, committed.response.body);
        assert.equal(JSON.parse(committed.response.body).sessionId, sessionIdOfChanges({ [store]: [insert(300), insert(301), slow] }));
        assert.deepEqual(await ids(mode.database, 300), [300, 301]);
      });

      it('a lost connection and a rejected change in one session: both undone, the session commits', async () => {
        const seen = await healedSession(mode, `heal-${mode.store}-mixed`, 400, async () => {
          await terminate(mode.store, 'idle in transaction');
          const refused = await send(`/v1/sessions/heal-${mode.store}-mixed/changes`, { store: mode.store, changes: [insert(450), insert(400)] });
          assert.equal(refused.response.statusCode, 409, refused.response.body);
        });
        assert.ok(seen <= 1, `the worker saw ${seen} 503s`);
        assert.deepEqual(await ids(mode.database, 450), []);
      });
    });
  }
});

describe('postgres two-phase: a connection lost after PREPARE TRANSACTION', { skip: skipUnlessFound({ postgres: postgresBinDir() }) }, () => {
  let server: PostgresServer;
  let service: TestService;
  const url = () => server.connectionString.replace(/\/postgres$/, '/heal_prepared');
  const insert = (id: number) => ({ sql: 'INSERT INTO items (id) VALUES ($1)', params: [id] });
  const post = (path: string, body: unknown): Promise<LightMyRequestResponse> =>
    service.app.inject({ method: 'POST', url: path, headers: { 'content-type': 'application/json' }, payload: JSON.stringify(body) });

  before(async () => {
    server = await startPostgres({ twoPhase: true });
    await postgresRows(server.connectionString, 'CREATE DATABASE heal_prepared');
    await postgresRows(url(), 'CREATE TABLE items (id INTEGER PRIMARY KEY)');
    service = await startTestService({
      kv: 'sqlite',
      // Holds the session between its commit point and COMMIT PREPARED, long enough to kill its connections.
      failpoints: 'commit.afterIntent=delay(4000)',
      stores: [{ name: 'tp', type: 'postgres', options: { connectionString: url(), twoPhase: true } }],
    });
  });
  after(async () => {
    await service?.dispose();
    await server?.cleanup();
  });

  it('every commitd connection killed between PREPARE and COMMIT PREPARED: the session commits', async () => {
    assert.equal((await post('/v1/sessions', { key: 'heal-prepared', stores: ['tp'] })).statusCode, 201);
    assert.equal((await post('/v1/sessions/heal-prepared/changes', { store: 'tp', changes: [insert(1)] })).statusCode, 200);
    const committing = post('/v1/sessions/heal-prepared/commit', {});
    await waitFor('the prepared transaction', async () =>
      (await postgresRows(server.connectionString, 'SELECT 1 FROM pg_prepared_xacts')).length > 0 ? true : undefined,
    );
    await postgresRows(server.connectionString, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'commitd/tp'");
    const response = await committing;
    assert.equal(response.statusCode, 200, response.body);
    assert.equal(JSON.parse(response.body).sessionId, sessionIdOfChanges({ tp: [insert(1)] }));
    assert.deepEqual(await postgresRows(url(), 'SELECT id FROM items'), [{ id: 1 }]);
    assert.deepEqual(await postgresRows(server.connectionString, 'SELECT gid FROM pg_prepared_xacts'), []);
  });
});

/**
 * DESIGN "Session lifecycle", step 3, and docs/recovery.md: a MySQL/MariaDB connection lost
 * before the commit point heals. The connection of an open session is killed (`KILL
 * <thread>` from another session) or the server restarts, between requests or while a request
 * runs; commitd opens
 * a new connection (XA mode: a new attempt of the xid) and applies the session's logged
 * changes again. The worker sees at most one `503`, the session goes on and commits with
 * the session ID of an undisturbed run, every change applied once. Plain and XA mode, over
 * HTTP, on a throwaway server.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { LightMyRequestResponse } from 'fastify';
import { sessionIdOfChanges } from '../src/core/session-id.ts';
import { mariadbBinary, mariadbInstallDb, mysqlRows, startMariadb, type MariadbServer } from './harness/mariadb.ts';
import { skipUnlessFound } from './harness/require.ts';
import { startTestService, type TestService } from './support/service.ts';
import { waitFor } from './support/wait.ts';

const MODES = [
  { store: 'plain', xa: false },
  { store: 'xa', xa: true },
] as const;

describe('mysql: lost connections heal', { skip: skipUnlessFound({ mariadbd: mariadbBinary(), 'mariadb-install-db': mariadbInstallDb() }) }, () => {
  let server: MariadbServer;
  let service: TestService;
  const urls = new Map<string, string>();
  const urlOf = (store: string) => urls.get(store) as string;
  const databaseOf = (store: string) => new URL(urlOf(store)).pathname.slice(1);
  const insert = (id: number) => ({ sql: 'INSERT INTO items (id) VALUES (?)', params: [id] });
  const ids = async (store: string, from: number) =>
    (await mysqlRows<{ id: number }>(urlOf(store), 'SELECT id FROM items WHERE id >= ? AND id < ? ORDER BY id', [from, from + 100])).map((r) => r.id);
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

  /** Kills every connection commitd holds to a store's database (the session's own among them), from another session. */
  async function killSessions(store: string): Promise<number> {
    const rows = await mysqlRows<{ id: number }>(server.url, 'SELECT ID AS id FROM information_schema.PROCESSLIST WHERE DB = ?', [databaseOf(store)]);
    for (const { id } of rows) await mysqlRows(server.url, `KILL ${Number(id)}`);
    return rows.length;
  }

  before(async () => {
    server = await startMariadb();
    for (const mode of MODES) {
      const url = await server.createDatabase(`heal_${mode.store}`);
      urls.set(mode.store, url);
      await mysqlRows(url, 'CREATE TABLE items (id INT PRIMARY KEY) ENGINE=InnoDB');
    }
    service = await startTestService({
      kv: 'sqlite',
      stores: MODES.map((mode) => ({ name: mode.store, type: 'mysql', options: { connectionString: urlOf(mode.store), xa: mode.xa } })),
    });
  });
  after(async () => {
    await service?.dispose();
    await server?.cleanup();
  });

  /** begin, A, (disturb), B, C, commit; asserts the ID and the rows of an undisturbed run. */
  async function healedSession(store: string, key: string, base: number, disturb: () => Promise<void>): Promise<number> {
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
    assert.deepEqual(await ids(store, base), [base, base + 1, base + 2], 'every change applied once');
    const prepared = await mysqlRows<{ formatID: number }>(server.url, 'XA RECOVER');
    assert.deepEqual(prepared, [], 'no XA transaction is left prepared');
    return second.unavailable + third.unavailable + committed.unavailable;
  }

  for (const mode of MODES) {
    describe(`${mode.store} mode`, () => {
      it('KILL of the session connection between requests: the session heals, at most one 503', async () => {
        const seen = await healedSession(mode.store, `heal-${mode.store}-kill`, 100, async () => {
          assert.ok((await killSessions(mode.store)) >= 1, 'the session holds a connection');
        });
        assert.ok(seen <= 1, `the worker saw ${seen} 503s`);
      });

      it('a server restart between requests: the session heals, at most one 503', async () => {
        const seen = await healedSession(mode.store, `heal-${mode.store}-restart`, 200, () => server.restart());
        assert.ok(seen <= 1, `the worker saw ${seen} 503s`);
      });

      it('KILL of the session connection while a request runs: the request is run again on a new connection', async () => {
        const { store } = mode;
        const key = `heal-${store}-inflight`;
        const slow = { sql: 'SELECT SLEEP(1) AS s, ? AS n', params: [1] };
        assert.equal((await post('/v1/sessions', { key, stores: [store] })).statusCode, 201);
        assert.equal((await post(`/v1/sessions/${key}/changes`, { store, changes: [insert(300)] })).statusCode, 200);
        const inFlight = send(`/v1/sessions/${key}/changes`, { store, changes: [insert(301), slow] });
        const sleeping = await waitFor('the slow change to run', async () => {
          const rows = await mysqlRows<{ id: number }>(
            server.url,
            "SELECT ID AS id FROM information_schema.PROCESSLIST WHERE DB = ? AND INFO LIKE 'SELECT SLEEP%'",
            [databaseOf(store)],
          );
          return rows[0]?.id;
        });
        await mysqlRows(server.url, `KILL ${Number(sleeping)}`);
        const { response, unavailable } = await inFlight;
        assert.equal(response.statusCode, 200, response.body);
        assert.ok(unavailable <= 1, `the worker saw ${unavailable} 503s`);
        const committed = await send(`/v1/sessions/${key}/commit`, {});
        assert.equal(committed.response.statusCode, 200, committed.response.body);
        assert.equal(JSON.parse(committed.response.body).sessionId, sessionIdOfChanges({ [store]: [insert(300), insert(301), slow] }));
        assert.deepEqual(await ids(store, 300), [300, 301]);
      });

      it('a lost connection and a rejected change in one session: both undone, the session commits', async () => {
        const key = `heal-${mode.store}-mixed`;
        const seen = await healedSession(mode.store, key, 400, async () => {
          assert.ok((await killSessions(mode.store)) >= 1);
          const refused = await send(`/v1/sessions/${key}/changes`, { store: mode.store, changes: [insert(450), insert(400)] });
          assert.equal(refused.response.statusCode, 409, refused.response.body);
        });
        assert.ok(seen <= 1, `the worker saw ${seen} 503s`);
        assert.deepEqual(await ids(mode.store, 450), []);
      });
    });
  }
});

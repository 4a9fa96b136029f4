/**
 * DESIGN.md "The boundary", points 1 and 2, for `sqlite` stores, over HTTP: a worker's change
 * that reaches commitd's marker table by any route is refused with `400 invalid_request`
 * naming the rule, and nothing of the request is applied; a statement past the store's
 * `statementTimeout` is aborted and answers `409 store_conflict` (`storeCode:
 * STATEMENT_TIMEOUT`). What stops each route: the authorizer of commitd's SQLite extension
 * (native/sqlite-guard.c), which SQLite consults when it compiles a worker's statement —
 * at apply, at prepare and whenever a schema change recompiles it — and, for views and
 * triggers, the probe compiled once they exist (`StatementCache.probeSchema`). The limit:
 * the extension's watchdog thread, which interrupts the statement.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { sqliteRows, sqliteRun } from './support/rows.ts';
import { startTestService, type TestService } from './support/service.ts';

let unique = 0;
const freshKey = (label: string) => `${label}-${process.pid}-${++unique}`;

describe('sqlite stores: bookkeeping out of reach, statements bounded (DESIGN "The boundary" 1, 2)', () => {
  let service: TestService;
  let db: string;
  const commit = (key: string, changes: unknown[]) =>
    service.app.inject({
      method: 'POST',
      url: '/v1/commits',
      headers: { 'content-type': 'application/json' },
      payload: JSON.stringify({ key, changes: { main: changes } }),
    });
  const markers = () => sqliteRows<{ key: string; session_id: string }>(db, 'SELECT key, session_id FROM commitd_sessions ORDER BY key');
  const items = () => sqliteRows<{ name: string }>(db, 'SELECT name FROM items ORDER BY name').map((row) => row.name);
  const schema = () =>
    sqliteRows<{ name: string }>(db, "SELECT name FROM sqlite_schema WHERE type IN ('view', 'trigger') ORDER BY name").map((row) => row.name);

  before(async () => {
    service = await startTestService({ kv: 'sqlite', stores: [] });
    db = join(service.dir, 'guarded.db');
    const added = await service.app.inject({
      method: 'POST',
      url: '/v1/stores',
      headers: { 'content-type': 'application/json' },
      payload: JSON.stringify({ name: 'main', type: 'sqlite', options: { path: db, statementTimeout: '300ms' } }),
    });
    assert.equal(added.statusCode, 201, added.body);
    sqliteRun(db, 'CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL)');
    const first = await commit('ret-2', [{ sql: "INSERT INTO items (name) VALUES ('first')" }]);
    assert.equal(first.statusCode, 200, first.body);
  });
  after(async () => service?.dispose());

  /** Sends `sql` after a good insert in one one-shot: refused with 400 naming `rule`, nothing applied. */
  async function assertRefused(sql: string, rule: string): Promise<void> {
    const before = { markers: markers(), items: items(), schema: schema() };
    const key = freshKey('attack');
    const response = await commit(key, [{ sql: `INSERT INTO items (name) VALUES ('${key}')` }, { sql }]);
    assert.equal(response.statusCode, 400, `${sql}: ${response.body}`);
    assert.match(String(response.headers['content-type']), /^application\/problem\+json/);
    const problem = JSON.parse(response.body) as { code: string; rule: string; detail: string };
    assert.equal(problem.code, 'invalid_request', sql);
    assert.equal(problem.rule, rule, `${sql}: ${problem.detail}`);
    assert.match(problem.detail, new RegExp(`rule ${rule}`));
    assert.deepEqual({ markers: markers(), items: items(), schema: schema() }, before, `${sql} changed nothing`);
    // The key is not used up: the same key with good changes commits.
    assert.equal((await commit(key, [{ sql: `INSERT INTO items (name) VALUES ('${key}')` }])).statusCode, 200);
  }

  // Each route of the list; the authorizer refuses each one at compile time.
  it('refuses DELETE, UPDATE and a forged INSERT on commitd_sessions', async () => {
    await assertRefused("DELETE FROM commitd_sessions WHERE key = 'ret-2'", 'marker-table');
    await assertRefused("UPDATE commitd_sessions SET session_id = '00' WHERE key = 'ret-2'", 'marker-table');
    await assertRefused("INSERT INTO main.\"COMMITD_SESSIONS\" VALUES ('other-key', '00', 'now')", 'marker-table');
  });

  it('refuses reading it, also through a CTE', async () => {
    await assertRefused('SELECT count(*) FROM commitd_sessions', 'marker-table');
    await assertRefused('WITH m AS (SELECT key FROM commitd_sessions) INSERT INTO items (name) SELECT key FROM m', 'marker-table');
  });

  it('refuses DROP, ALTER … RENAME, ALTER … ADD COLUMN and CREATE INDEX on it', async () => {
    await assertRefused('DROP TABLE commitd_sessions', 'marker-table');
    await assertRefused('ALTER TABLE commitd_sessions RENAME TO gone', 'marker-table');
    await assertRefused('ALTER TABLE commitd_sessions ADD COLUMN extra TEXT', 'marker-table');
    await assertRefused('CREATE INDEX by_id ON commitd_sessions (session_id)', 'marker-table');
  });

  it('refuses a trigger on it that would make markers vanish (RAISE(IGNORE))', async () => {
    await assertRefused('CREATE TRIGGER vanish BEFORE INSERT ON commitd_sessions BEGIN SELECT RAISE(IGNORE); END', 'marker-table');
  });

  // Views and triggers compile their bodies where they are used: the probe compiles those uses.
  it('refuses a view over it and a trigger on the worker’s own table that writes it', async () => {
    await assertRefused('CREATE VIEW peek AS SELECT * FROM commitd_sessions', 'marker-table');
    await assertRefused('CREATE TRIGGER wipe AFTER INSERT ON items BEGIN DELETE FROM commitd_sessions; END', 'marker-table');
  });

  it('refuses a TEMP table that would shadow it on the shared connection', async () => {
    await assertRefused('CREATE TEMP TABLE commitd_sessions (key TEXT)', 'connection-object');
    await assertRefused('CREATE TEMP TRIGGER t AFTER INSERT ON items BEGIN SELECT 1; END', 'connection-object');
  });

  it("refuses calls to commitd's own guard functions and load_extension", async () => {
    await assertRefused("SELECT commitd_guard('guess', 0, 0)", 'function');
    await assertRefused('SELECT commitd_secret()', 'function');
    await assertRefused("SELECT load_extension('/tmp/x.so')", 'function');
  });

  it('still lets a worker change its own schema', async () => {
    assert.equal((await commit(freshKey('ddl'), [{ sql: 'CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, body TEXT)' }])).statusCode, 200);
    assert.equal((await commit(freshKey('ddl'), [{ sql: 'ALTER TABLE notes ADD COLUMN author TEXT' }])).statusCode, 200);
    assert.equal((await commit(freshKey('ddl'), [{ sql: 'CREATE INDEX notes_by_author ON notes (author)' }])).statusCode, 200);
    assert.equal((await commit(freshKey('ddl'), [{ sql: 'CREATE VIEW note_bodies AS SELECT body FROM notes' }])).statusCode, 200);
    const inserted = await commit(freshKey('ddl'), [{ sql: "INSERT INTO notes (body, author) VALUES ('hello', 'ann')" }]);
    assert.equal(inserted.statusCode, 200, inserted.body);
    assert.deepEqual(sqliteRows(db, 'SELECT body, author FROM notes'), [{ body: 'hello', author: 'ann' }]);
  });

  it('aborts a statement past statementTimeout with 409 STATEMENT_TIMEOUT; the key can be retried', async () => {
    const key = freshKey('runaway');
    const started = performance.now();
    const response = await commit(key, [
      { sql: `INSERT INTO items (name) VALUES ('${key}')` },
      { sql: 'WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c' },
    ]);
    const took = performance.now() - started;
    assert.equal(response.statusCode, 409, response.body);
    const problem = JSON.parse(response.body) as { code: string; storeCode: string; timeoutMs: number; change: number };
    assert.equal(problem.code, 'store_conflict');
    assert.equal(problem.storeCode, 'STATEMENT_TIMEOUT');
    assert.equal(problem.timeoutMs, 300);
    assert.equal(problem.change, 1);
    // Without the watchdog the statement never ends; with it, it ends soon after 300 ms.
    assert.ok(took < 10_000, `answered after ${Math.round(took)} ms`);
    assert.ok(!items().includes(key), 'nothing of the session was applied');
    const retried = await commit(key, [{ sql: `INSERT INTO items (name) VALUES ('${key}')` }]);
    assert.equal(retried.statusCode, 200, retried.body);
    assert.ok(items().includes(key));
  });

  // The statement runs on the store's own thread (src/stores/sqlite/thread.ts), not on the event loop.
  it('answers /healthz while a statement runs', async () => {
    const slow = join(service.dir, 'slow.db');
    const added = await service.app.inject({
      method: 'POST',
      url: '/v1/stores',
      headers: { 'content-type': 'application/json' },
      payload: JSON.stringify({ name: 'slow', type: 'sqlite', options: { path: slow, statementTimeout: '2s' } }),
    });
    assert.equal(added.statusCode, 201, added.body);
    let committed = false;
    const runaway = service.app
      .inject({
        method: 'POST',
        url: '/v1/commits',
        headers: { 'content-type': 'application/json' },
        payload: JSON.stringify({
          key: freshKey('slow'),
          changes: { slow: [{ sql: 'WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c' }] },
        }),
      })
      .then((response) => {
        committed = true;
        return response;
      });
    // For about a second of the statement's two, /healthz keeps answering at once; on the
    // event loop, the statement would hold one of these answers back until it ended.
    const started = performance.now();
    let slowest = 0;
    for (let i = 0; i < 500 && performance.now() - started < 1000; i++) {
      await sleep(5);
      const asked = performance.now();
      const health = await service.app.inject({ method: 'GET', url: '/healthz' });
      slowest = Math.max(slowest, performance.now() - asked);
      assert.equal(health.statusCode, 200);
    }
    assert.equal(committed, false, 'the statement was still running');
    assert.ok(slowest < 1000, `the slowest /healthz took ${Math.round(slowest)} ms`);
    assert.equal((await runaway).statusCode, 409);
  });
});

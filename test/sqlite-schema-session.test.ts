/**
 * Issue "SQL sessions the way users write them": on a sqlite store, one session may change
 * the schema and then use it — CREATE TABLE then INSERT, ALTER TABLE … ADD COLUMN then an
 * INSERT that uses the column — one-shot and interactive. A statement that only compiles
 * after an earlier change of its session ran is compiled at prepare; one that still does not
 * compile then answers 409 store_conflict naming the change by the same index in the detail
 * and in the `change` member, and nothing is applied.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { sqliteRows } from './support/rows.ts';
import { startTestService, type TestService } from './support/service.ts';

describe('sqlite: schema and data in one session', () => {
  let service: TestService;
  const post = (url: string, body: unknown) =>
    service.app.inject({ method: 'POST', url, headers: { 'content-type': 'application/json' }, payload: JSON.stringify(body) });
  const rows = (sql: string) => sqliteRows(join(service.dir, 'main.db'), sql);
  const tables = () => rows("SELECT name FROM sqlite_schema WHERE type = 'table' AND name LIKE 'notes%' ORDER BY name");

  before(async () => {
    service = await startTestService({ kv: 'sqlite' });
  });
  after(async () => service?.dispose());

  it('a one-shot creates a table and inserts into it (the README’s first commit)', async () => {
    const response = await post('/v1/commits', {
      key: 'schema-1',
      changes: {
        main: [
          { sql: 'CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, body TEXT)' },
          { sql: 'INSERT INTO notes (body) VALUES (?)', params: ['first'] },
          { sql: 'CREATE INDEX notes_by_body ON notes (body)' },
        ],
      },
    });
    assert.equal(response.statusCode, 200, response.body);
    assert.deepEqual(rows('SELECT body FROM notes'), [{ body: 'first' }]);
    assert.equal(rows("SELECT name FROM sqlite_schema WHERE name = 'notes_by_body'").length, 1);
  });

  it('an interactive session adds a column and inserts a row that uses it', async () => {
    assert.equal((await post('/v1/sessions', { key: 'schema-2', stores: ['main'] })).statusCode, 201);
    const altered = await post('/v1/sessions/schema-2/changes', { store: 'main', changes: [{ sql: 'ALTER TABLE notes ADD COLUMN author TEXT' }] });
    assert.equal(altered.statusCode, 200, altered.body);
    const inserted = await post('/v1/sessions/schema-2/changes', {
      store: 'main',
      changes: [{ sql: 'INSERT INTO notes (body, author) VALUES (?, ?)', params: ['second', 'ann'] }],
    });
    assert.equal(inserted.statusCode, 200, inserted.body);
    const committed = await post('/v1/sessions/schema-2/commit', {});
    assert.equal(committed.statusCode, 200, committed.body);
    assert.deepEqual(rows("SELECT author FROM notes WHERE body = 'second'"), [{ author: 'ann' }]);
  });

  it('a statement that still does not compile answers 409 at commit naming its index, and nothing is applied', async () => {
    const response = await post('/v1/commits', {
      key: 'schema-3',
      changes: {
        main: [{ sql: 'CREATE TABLE notes_b (id INTEGER PRIMARY KEY)' }, { sql: 'INSERT INTO notes_c (id) VALUES (1)' }],
      },
    });
    assert.equal(response.statusCode, 409, response.body);
    const problem = JSON.parse(response.body) as { code: string; detail: string; change: number };
    assert.equal(problem.code, 'store_conflict');
    assert.equal(problem.change, 1);
    assert.match(problem.detail, /changes\[1\]/);
    assert.match(problem.detail, /no such table: notes_c/);
    assert.deepEqual(tables(), [{ name: 'notes' }], 'the CREATE TABLE was rolled back with the session');
  });

  it('without a schema change before it, a statement on a missing table still fails at once', async () => {
    assert.equal((await post('/v1/sessions', { key: 'schema-4', stores: ['main'] })).statusCode, 201);
    const response = await post('/v1/sessions/schema-4/changes', { store: 'main', changes: [{ sql: 'INSERT INTO nowhere VALUES (1)' }] });
    assert.equal(response.statusCode, 409, response.body);
    assert.match(JSON.parse(response.body).detail, /no such table: nowhere/);
  });
});

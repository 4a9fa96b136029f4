/**
 * DESIGN.md "The boundary", points 1 and 2, for the `postgres` store type, over HTTP against
 * a real PostgreSQL, in plain and two-phase mode: a change that reaches commitd_sessions or
 * lifts the statement limit is refused with 400 naming the rule and nothing of the request
 * is applied; DDL on the worker's own tables commits; a statement past the limit answers 409
 * STATEMENT_TIMEOUT and the key can be retried. The mechanism is src/stores/postgres/guard.ts.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { LightMyRequestResponse } from 'fastify';
import { postgresBinDir, startPostgres, type PostgresServer } from './harness/postgres.ts';
import { skipUnlessFound } from './harness/require.ts';
import { postgresRows } from './support/rows.ts';
import { startTestService, type TestService } from './support/service.ts';

const MODES = [
  { store: 'plain', database: 'boundary_plain', twoPhase: false },
  { store: 'twophase', database: 'boundary_twophase', twoPhase: true },
] as const;

/** A route to the marker table or the limit, the rule that refuses it, and what in guard.ts stops it. */
interface Attack {
  readonly route: string;
  readonly sql: string;
  readonly rule: string;
  readonly mechanism: string;
}

const ATTACKS: readonly Attack[] = [
  { route: 'DML', sql: 'DELETE FROM commitd_sessions', rule: 'marker-table', mechanism: 'the parse tree names commitd_sessions (a RangeVar)' },
  {
    route: 'a CTE, schema-qualified and quoted',
    sql: 'WITH gone AS (DELETE FROM public."commitd_sessions" RETURNING key) SELECT count(*) FROM gone',
    rule: 'marker-table',
    mechanism: 'the tree is walked into every CTE; quoting is resolved by the parser',
  },
  {
    route: 'a view',
    sql: 'CREATE VIEW peek AS SELECT key, session_id FROM commitd_sessions',
    rule: 'marker-table',
    mechanism: "the view's query is part of the tree",
  },
  {
    route: 'a trigger on the marker table',
    sql: 'CREATE TRIGGER keep BEFORE INSERT ON commitd_sessions FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger()',
    rule: 'marker-table',
    mechanism: "the trigger's relation names commitd_sessions",
  },
  {
    route: "a trigger on the worker's own table",
    sql: 'CREATE TRIGGER meddle BEFORE INSERT ON items FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger()',
    rule: 'statement-kind',
    mechanism: 'CREATE TRIGGER is off the whitelist: its function would run SQL the parser never sees',
  },
  {
    route: 'a function that builds the name at run time',
    sql: "CREATE FUNCTION wipe() RETURNS void LANGUAGE plpgsql AS $$ BEGIN EXECUTE 'DELETE FROM commitd' || '_sessions'; END $$",
    rule: 'statement-kind',
    mechanism: 'CREATE FUNCTION is off the whitelist',
  },
  {
    route: 'a DO block',
    sql: "DO $$ BEGIN EXECUTE 'DELETE FROM commitd' || '_sessions'; END $$",
    rule: 'statement-kind',
    mechanism: 'DO is off the whitelist',
  },
  {
    route: 'CALL',
    sql: 'CALL anything()',
    rule: 'statement-kind',
    mechanism: 'CALL is off the whitelist',
  },
  {
    route: 'a rule',
    sql: 'CREATE RULE hide AS ON INSERT TO items DO INSTEAD NOTHING',
    rule: 'statement-kind',
    mechanism: 'CREATE RULE is off the whitelist',
  },
  {
    route: 'a function that runs SQL text',
    sql: "SELECT query_to_xml('DELETE FROM commitd' || '_sessions RETURNING key', true, false, '')",
    rule: 'denied-function',
    mechanism: 'query_to_xml is on the deny list',
  },
  { route: 'ALTER', sql: 'ALTER TABLE commitd_sessions DROP COLUMN session_id', rule: 'marker-table', mechanism: 'the ALTER names commitd_sessions' },
  { route: 'DROP', sql: 'DROP TABLE IF EXISTS commitd_sessions', rule: 'marker-table', mechanism: 'the DROP names commitd_sessions' },
  { route: 'RENAME', sql: 'ALTER TABLE commitd_sessions RENAME TO parked', rule: 'marker-table', mechanism: 'the RENAME names commitd_sessions' },
  { route: 'RENAME onto', sql: 'ALTER TABLE items RENAME TO commitd_sessions', rule: 'marker-table', mechanism: 'the new name is a string in the tree' },
  { route: 'TRUNCATE', sql: 'TRUNCATE commitd_sessions', rule: 'marker-table', mechanism: 'the TRUNCATE names commitd_sessions' },
  { route: 'LOCK', sql: 'LOCK TABLE commitd_sessions', rule: 'marker-table', mechanism: 'the LOCK names commitd_sessions' },
  { route: 'COPY', sql: 'COPY commitd_sessions TO STDOUT', rule: 'marker-table', mechanism: 'the COPY names commitd_sessions' },
  {
    route: 'a regclass literal',
    sql: "SELECT pg_relation_size('commitd_sessions'::regclass)",
    rule: 'marker-table',
    mechanism: 'string constants are strings in the tree too',
  },
  {
    route: 'a Unicode-escaped name',
    sql: 'SELECT * FROM U&"commitd\\005fsessions"',
    rule: 'marker-table',
    mechanism: 'the parser resolves the escape before the name is compared',
  },
  {
    route: 'a session-level advisory lock',
    sql: 'SELECT pg_advisory_lock(42)',
    rule: 'denied-function',
    mechanism: 'it would outlive the session on the pooled connection: on the deny list',
  },
  { route: 'SET LOCAL statement_timeout', sql: 'SET LOCAL statement_timeout = 0', rule: 'statement-limit', mechanism: 'SET is refused' },
  { route: 'SET ROLE', sql: 'SET ROLE postgres', rule: 'statement-limit', mechanism: 'SET is refused' },
  {
    route: 'set_config',
    sql: "SELECT pg_catalog.set_config('statement_timeout', '0', true)",
    rule: 'statement-limit',
    mechanism: 'set_config is refused whatever its schema',
  },
  { route: 'RESET ALL', sql: 'RESET ALL', rule: 'statement-limit', mechanism: 'RESET is refused' },
  { route: 'RESET statement_timeout', sql: 'RESET statement_timeout', rule: 'statement-limit', mechanism: 'RESET is refused' },
];

describe('the boundary for postgres stores (DESIGN points 1 and 2)', { skip: skipUnlessFound({ PostgreSQL: postgresBinDir() }) }, () => {
  let server: PostgresServer;
  let service: TestService;
  let unique = 0;
  const freshKey = (label: string) => `${label}-${process.pid}-${++unique}`;

  const urlOf = (database: string) => server.connectionString.replace(/\/postgres$/, `/${database}`);
  const rows = <T extends Record<string, unknown>>(database: string, sql: string, params: unknown[] = []) => postgresRows<T>(urlOf(database), sql, params);
  const markers = (database: string) => rows<{ key: string; session_id: string }>(database, 'SELECT key, session_id FROM commitd_sessions ORDER BY key');
  const itemNames = async (database: string) => (await rows<{ name: string }>(database, 'SELECT name FROM items ORDER BY name')).map((row) => row.name);

  const commit = (key: string, changes: Record<string, unknown[]>): Promise<LightMyRequestResponse> =>
    service.app.inject({ method: 'POST', url: '/v1/commits', headers: { 'content-type': 'application/json' }, payload: JSON.stringify({ key, changes }) });
  const problemOf = (response: LightMyRequestResponse, status: number, code: string): Record<string, unknown> => {
    assert.equal(response.statusCode, status, response.body);
    const problem = JSON.parse(response.body) as Record<string, unknown>;
    assert.equal(problem.code, code, response.body);
    return problem;
  };

  before(async () => {
    server = await startPostgres({ twoPhase: true });
    for (const mode of MODES) {
      await postgresRows(server.connectionString, `CREATE DATABASE ${mode.database}`);
      await rows(mode.database, 'CREATE TABLE items (id SERIAL PRIMARY KEY, name TEXT NOT NULL)');
    }
    service = await startTestService({
      kv: 'sqlite',
      stores: MODES.map((mode) => ({
        name: mode.store,
        type: 'postgres',
        options: { connectionString: urlOf(mode.database), twoPhase: mode.twoPhase, statementTimeout: '1s' },
      })),
    });
    // A marker row in each store for the attacks to aim at.
    for (const mode of MODES) {
      const seeded = await commit(freshKey(`seed-${mode.store}`), { [mode.store]: [{ sql: 'INSERT INTO items (name) VALUES ($1)', params: ['seed'] }] });
      assert.equal(seeded.statusCode, 200, seeded.body);
    }
  });
  after(async () => {
    await service?.dispose();
    await server?.cleanup();
  });

  for (const mode of MODES) {
    describe(`${mode.store} mode`, () => {
      for (const attack of ATTACKS) {
        // Stopped before anything runs by guard.ts; the mechanism is named in `attack.mechanism`.
        it(`refuses ${attack.route} (${attack.mechanism}): 400 naming rule ${attack.rule}, nothing applied`, async () => {
          const markersBefore = await markers(mode.database);
          const itemsBefore = await itemNames(mode.database);
          assert.ok(markersBefore.length > 0);
          const key = freshKey('attack');
          const response = await commit(key, {
            [mode.store]: [{ sql: 'INSERT INTO items (name) VALUES ($1)', params: [key] }, { sql: attack.sql }],
          });
          const problem = problemOf(response, 400, 'invalid_request');
          assert.equal(problem.rule, attack.rule, response.body);
          assert.match(String(problem.detail), new RegExp(`rule ${attack.rule}`));
          assert.deepEqual(await markers(mode.database), markersBefore, 'the marker rows are intact');
          assert.deepEqual(await itemNames(mode.database), itemsBefore, "the request's other change was not committed");
          assert.deepEqual(await rows(mode.database, 'SELECT gid FROM pg_prepared_xacts WHERE database = current_database()'), []);
        });
      }

      it("commits DDL on the worker's own tables: CREATE TABLE, ALTER TABLE ADD COLUMN, CREATE INDEX, CREATE VIEW, DROP TABLE", async () => {
        const table = `own_${mode.store}`;
        await rows(mode.database, `CREATE TABLE ${table}_old (id INT)`);
        const response = await commit(freshKey('ddl'), {
          [mode.store]: [
            { sql: `CREATE TABLE ${table} (id INT PRIMARY KEY)` },
            { sql: `ALTER TABLE ${table} ADD COLUMN note TEXT` },
            { sql: `CREATE INDEX ${table}_note ON ${table} (note)` },
            { sql: `CREATE VIEW ${table}_notes AS SELECT note FROM ${table}` },
            { sql: `INSERT INTO ${table} (id, note) VALUES (1, 'kept')` },
            { sql: `DROP TABLE ${table}_old` },
          ],
        });
        assert.equal(response.statusCode, 200, response.body);
        assert.deepEqual(await rows(mode.database, `SELECT note FROM ${table}_notes`), [{ note: 'kept' }]);
        assert.deepEqual(await rows(mode.database, 'SELECT to_regclass($1) AS gone', [`${table}_old`]), [{ gone: null }]);
      });

      it('aborts a statement past statementTimeout (1 s): 409 store_conflict, storeCode STATEMENT_TIMEOUT; /healthz answers meanwhile; the key can be retried', async () => {
        const key = freshKey('slow');
        const started = Date.now();
        const slow = commit(key, { [mode.store]: [{ sql: 'INSERT INTO items (name) VALUES ($1)', params: [key] }, { sql: 'SELECT pg_sleep(10)' }] });
        const health = await service.app.inject({ method: 'GET', url: '/healthz' });
        assert.ok(Date.now() - started < 500, '/healthz answered while the statement ran');
        assert.ok(health.statusCode < 500, health.body);
        const problem = problemOf(await slow, 409, 'store_conflict');
        assert.equal(problem.storeCode, 'STATEMENT_TIMEOUT', JSON.stringify(problem));
        assert.ok(Date.now() - started < 5000, 'aborted at the limit, not after the 10 s sleep');
        assert.ok(!(await itemNames(mode.database)).includes(key));
        const retried = await commit(key, { [mode.store]: [{ sql: 'INSERT INTO items (name) VALUES ($1)', params: [key] }] });
        assert.equal(retried.statusCode, 200, retried.body);
        assert.ok((await itemNames(mode.database)).includes(key));
      });
    });
  }
});

/**
 * What only the mysql store type does, against a throwaway MariaDB; what every store type
 * does is in test/contract/mysql.test.ts. Over HTTP: the guard's refusals (400 naming the
 * rule, nothing applied) — bookkeeping, limits, and DDL, which MySQL commits implicitly — and
 * the statement limit (409 STATEMENT_TIMEOUT, the service answering meanwhile). On the store:
 * the marker row, two committers of one key, XA prepare and commit, prepared work surviving a
 * server kill and resolved as orphans, an adopter committing prepared work after commitd is
 * SIGKILLed past its commit point, and recovery skipping a committed key.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, afterEach, before, describe, it } from 'node:test';
import type { LightMyRequestResponse } from 'fastify';
import { pino } from 'pino';
import { keyBytes, toHex } from '../src/core/keys.ts';
import { sessionIdOfChanges, storeId } from '../src/core/session-id.ts';
import type { Store } from '../src/stores/api.ts';
import { mysqlStoreType, XA_MAX_KEY_BYTES, type MysqlChange, type MysqlOptions } from '../src/stores/mysql/store.ts';
import { makeTempDir, removeTempDir } from './harness/child.ts';
import { mariadbBinary, mariadbInstallDb, mysqlRows, startMariadb, type MariadbServer } from './harness/mariadb.ts';
import { skipUnlessFound } from './harness/require.ts';
import { startProcess } from './support/process.ts';
import { startTestService, type TestService } from './support/service.ts';
import { begun, commitOnce } from './support/store-session.ts';

const ctx = { name: 'shop', logger: pino({ level: 'silent' }), dataDir: '.', retentionSeconds: 60 };

/** A route to the bookkeeping, a limit or the transaction, and the rule that refuses it. */
interface Attack {
  readonly route: string;
  readonly sql: string;
  readonly rule: string;
}

const ATTACKS: readonly Attack[] = [
  { route: 'DML on the marker table', sql: 'DELETE FROM commitd_sessions', rule: 'marker-table' },
  { route: 'quoted, qualified, upper case', sql: 'UPDATE `shop`.`COMMITD_SESSIONS` SET session_id = 0', rule: 'marker-table' },
  { route: 'a CTE', sql: 'WITH m AS (SELECT * FROM commitd_sessions) SELECT count(*) FROM m', rule: 'marker-table' },
  { route: 'fullwidth letters (NFKC)', sql: 'DELETE FROM ｃｏｍｍｉｔｄ_sessions', rule: 'marker-table' },
  { route: 'an executable comment', sql: 'SELECT 1 /*! , (SELECT 1) */', rule: 'executable-comment' },
  { route: 'a MariaDB executable comment', sql: 'SELECT 1 /*M!100000 + 1 */', rule: 'executable-comment' },
  { route: 'an optimizer hint setting a variable', sql: 'SELECT /*+ SET_VAR(max_execution_time=0) */ 1', rule: 'executable-comment' },
  { route: 'SET of a session variable', sql: 'SET SESSION max_statement_time = 0', rule: 'statement-limit' },
  { route: 'SET STATEMENT … FOR', sql: 'SET STATEMENT max_statement_time=0 FOR SELECT 1', rule: 'statement-limit' },
  { route: 'SET autocommit, after a comment', sql: '/* x */ -- y\n set autocommit = 1', rule: 'statement-limit' },
  { route: 'CREATE TABLE', sql: 'CREATE TABLE notes (id INT)', rule: 'implicit-commit' },
  { route: 'CREATE TEMPORARY TABLE', sql: 'CREATE TEMPORARY TABLE scratch (id INT)', rule: 'implicit-commit' },
  { route: 'ALTER TABLE', sql: 'ALTER TABLE items ADD COLUMN note TEXT', rule: 'implicit-commit' },
  { route: 'a trigger', sql: 'CREATE TRIGGER t BEFORE INSERT ON items FOR EACH ROW SET NEW.name = NEW.name', rule: 'implicit-commit' },
  { route: 'DROP TABLE', sql: 'DROP TABLE items', rule: 'implicit-commit' },
  { route: 'TRUNCATE', sql: 'TRUNCATE TABLE items', rule: 'implicit-commit' },
  { route: 'RENAME TABLE', sql: 'RENAME TABLE items TO things', rule: 'implicit-commit' },
  { route: 'LOCK TABLES', sql: 'LOCK TABLES items WRITE', rule: 'implicit-commit' },
  { route: 'GRANT', sql: "GRANT SELECT ON *.* TO 'x'@'%'", rule: 'implicit-commit' },
  { route: 'BEGIN', sql: 'BEGIN', rule: 'implicit-commit' },
  { route: 'START TRANSACTION', sql: 'START TRANSACTION', rule: 'implicit-commit' },
  { route: 'ANALYZE TABLE', sql: 'ANALYZE TABLE items', rule: 'implicit-commit' },
  { route: 'FLUSH', sql: 'FLUSH TABLES', rule: 'implicit-commit' },
  { route: 'COMMIT', sql: 'COMMIT', rule: 'transaction-control' },
  { route: 'XA', sql: "XA END 'x'", rule: 'transaction-control' },
  { route: 'SAVEPOINT', sql: 'SAVEPOINT s', rule: 'transaction-control' },
  { route: 'PREPARE', sql: "PREPARE s FROM 'DELETE FROM commitd' 'sessions'", rule: 'statement-kind' },
  { route: 'EXECUTE IMMEDIATE', sql: "EXECUTE IMMEDIATE CONCAT('DELETE FROM commitd', '_sessions')", rule: 'statement-kind' },
  { route: 'CALL', sql: 'CALL wipe()', rule: 'statement-kind' },
  { route: 'DO', sql: 'DO SLEEP(10)', rule: 'statement-kind' },
  { route: 'HANDLER', sql: 'HANDLER items OPEN', rule: 'statement-kind' },
  { route: 'LOAD DATA', sql: "LOAD DATA INFILE '/etc/passwd' INTO TABLE items", rule: 'statement-kind' },
  { route: 'KILL', sql: 'KILL 1', rule: 'statement-kind' },
  { route: 'a user-level lock', sql: "SELECT GET_LOCK('held', 0)", rule: 'denied-function' },
  { route: 'a file read', sql: "SELECT LOAD_FILE('/etc/passwd')", rule: 'denied-function' },
  { route: 'a file write', sql: "SELECT name FROM items INTO OUTFILE '/tmp/out'", rule: 'denied-function' },
];

describe('mysql store', { skip: skipUnlessFound({ mariadbd: mariadbBinary(), 'mariadb-install-db': mariadbInstallDb() }) }, () => {
  let server: MariadbServer;
  /** The database of the HTTP tests (store `shop`), and of the store-level tests. */
  let shopUrl: string;
  let storeUrl: string;
  let service: TestService;
  let stores: Store<MysqlChange>[] = [];
  let unique = 0;
  const freshKey = (label: string) => `${label}-${process.pid}-${++unique}`;

  before(async () => {
    server = await startMariadb();
    shopUrl = await server.createDatabase('shop');
    storeUrl = await server.createDatabase('store');
    for (const url of [shopUrl, storeUrl]) await mysqlRows(url, 'CREATE TABLE items (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(200) NOT NULL)');
    service = await startTestService({
      kv: 'sqlite',
      stores: [{ name: 'shop', type: 'mysql', options: { connectionString: shopUrl, statementTimeout: '1s' } }],
    });
    const seeded = await commit(freshKey('seed'), { shop: [{ sql: 'INSERT INTO items (name) VALUES (?)', params: ['seed'] }] });
    assert.equal(seeded.statusCode, 200, seeded.body);
  });
  afterEach(async () => {
    for (const store of stores) await store.close();
    stores = [];
  });
  after(async () => {
    await service?.dispose();
    await server?.cleanup();
  });

  const commit = (key: string, changes: Record<string, unknown[]>): Promise<LightMyRequestResponse> =>
    service.app.inject({ method: 'POST', url: '/v1/commits', headers: { 'content-type': 'application/json' }, payload: JSON.stringify({ key, changes }) });
  const problemOf = (response: LightMyRequestResponse, status: number, code: string): Record<string, unknown> => {
    assert.equal(response.statusCode, status, response.body);
    const problem = JSON.parse(response.body) as Record<string, unknown>;
    assert.equal(problem.code, code, response.body);
    return problem;
  };
  const names = async (url: string) => (await mysqlRows<{ name: string }>(url, 'SELECT name FROM items ORDER BY id')).map((row) => row.name);
  const markers = (url: string) => mysqlRows<{ key: Buffer; session_id: string }>(url, 'SELECT `key`, session_id FROM commitd_sessions ORDER BY `key`');
  const prepared = async () => (await mysqlRows<{ formatID: number }>(server.url, 'XA RECOVER')).length;
  const insert = (name: string): MysqlChange => ({ sql: 'INSERT INTO items (name) VALUES (?)', params: [name] });

  async function open(options: Partial<MysqlOptions> = {}): Promise<Store<MysqlChange>> {
    const store = await mysqlStoreType.create({ connectionString: storeUrl, ...options }, ctx);
    stores.push(store);
    return store;
  }

  describe('the guard (over HTTP)', () => {
    for (const attack of ATTACKS) {
      it(`refuses ${attack.route}: 400 naming rule ${attack.rule}, nothing applied`, async () => {
        const markersBefore = await markers(shopUrl);
        const namesBefore = await names(shopUrl);
        const key = freshKey('attack');
        const response = await commit(key, { shop: [insert(key), { sql: attack.sql }] });
        const problem = problemOf(response, 400, 'invalid_request');
        assert.equal(problem.rule, attack.rule, response.body);
        assert.match(String(problem.detail), new RegExp(`rule ${attack.rule}`));
        assert.deepEqual(await markers(shopUrl), markersBefore, 'the marker rows are intact');
        assert.deepEqual(await names(shopUrl), namesBefore, "the request's other change was not committed");
      });
    }

    it('says why DDL is refused: MySQL commits it implicitly', async () => {
      const response = await commit(freshKey('ddl'), { shop: [{ sql: 'CREATE TABLE IF NOT EXISTS notes (id INT)' }, insert('note')] });
      const problem = problemOf(response, 400, 'invalid_request');
      assert.match(String(problem.detail), /commit it implicitly/);
      assert.deepEqual(await mysqlRows(shopUrl, "SHOW TABLES LIKE 'notes'"), []);
    });

    it('refuses two statements in one change (409), and commits what the guard allows', async () => {
      const twice = await commit(freshKey('two'), { shop: [{ sql: "INSERT INTO items (name) VALUES ('a'); DELETE FROM items" }] });
      problemOf(twice, 409, 'store_conflict');
      const key = freshKey('allowed');
      const allowed = await commit(key, {
        shop: [
          insert(key),
          { sql: "UPDATE items SET name = CONCAT(name, ' -- not a comment; nor a statement') WHERE name = ?", params: [key] },
          { sql: 'WITH last AS (SELECT MAX(id) AS id FROM items) SELECT id FROM last' },
          { sql: "REPLACE INTO items (id, name) SELECT id, name FROM items WHERE name LIKE 'seed%'" },
        ],
      });
      assert.equal(allowed.statusCode, 200, allowed.body);
      assert.ok((await names(shopUrl)).includes(`${key} -- not a comment; nor a statement`));
    });

    it('aborts a statement past statementTimeout (1 s): 409 STATEMENT_TIMEOUT; /healthz answers meanwhile; the key can be retried', async () => {
      const key = freshKey('slow');
      const started = Date.now();
      const slow = commit(key, { shop: [insert(key), { sql: 'SELECT SLEEP(10)' }] });
      const health = await service.app.inject({ method: 'GET', url: '/healthz' });
      assert.ok(Date.now() - started < 500, '/healthz answered while the statement ran');
      assert.ok(health.statusCode < 500, health.body);
      const problem = problemOf(await slow, 409, 'store_conflict');
      assert.equal(problem.storeCode, 'STATEMENT_TIMEOUT', JSON.stringify(problem));
      assert.ok(Date.now() - started < 5000, 'aborted at the limit, not after the 10 s sleep');
      assert.ok(!(await names(shopUrl)).includes(key));
      const retried = await commit(key, { shop: [insert(key)] });
      assert.equal(retried.statusCode, 200, retried.body);
      assert.ok((await names(shopUrl)).includes(key));
    });

    it('aborts a statement waiting on a row lock past the limit; the lock holder commits', async () => {
      const row = freshKey('locked');
      await mysqlRows(storeUrl, 'INSERT INTO items (name) VALUES (?)', [row]);
      const [holding, waiting] = [await open({ statementTimeout: '500ms' }), await open({ statementTimeout: '500ms' })];
      const ownerKey = freshKey('owner');
      const owner = await begun(holding, ownerKey, [{ sql: 'UPDATE items SET name = ? WHERE name = ?', params: [`${row}-owned`, row] }]);
      const blocked = await begun(waiting, freshKey('blocked'), []);
      await assert.rejects(blocked.apply({ sql: 'UPDATE items SET name = ? WHERE name = ?', params: [`${row}-stolen`, row] }), {
        code: 'CHANGE_REJECTED',
        detail: { code: 'STATEMENT_TIMEOUT', errno: 1317, timeoutMs: 500 },
      });
      await blocked.cancel();
      await owner.commit(keyBytes(ownerKey));
      assert.ok((await names(storeUrl)).includes(`${row}-owned`));
      assert.equal((await service.app.inject({ method: 'GET', url: '/healthz' })).statusCode, 200);
    });
  });

  it('keeps its marker row in commitd_sessions: the key, the session ID in hex and when it committed', async () => {
    const store = await open();
    const key = freshKey('marker');
    const id = await commitOnce(store, key, [insert(key)]);
    const [row] = await mysqlRows<{ session_id: string; committed_at: Date }>(
      storeUrl,
      'SELECT session_id, committed_at FROM commitd_sessions WHERE `key` = ?',
      [Buffer.from(key)],
    );
    assert.equal(row?.session_id, toHex(id));
    assert.ok(row?.committed_at instanceof Date);
  });

  it('two committers of one key (a paused owner and its successor): the data lands once', async () => {
    const [paused, successor] = [await open(), await open()];
    const key = freshKey('race');
    const same = [insert(key)];
    const first = await begun(paused, key, same);
    const second = await begun(successor, key, same);
    await first.prepare(keyBytes(key));
    // The loser's marker insert waits on the winner's open transaction, then finds its marker: it skips.
    const loser = second.commit(keyBytes(key));
    const winnerId = await first.commit(keyBytes(key));
    assert.equal(toHex(await loser), toHex(winnerId));
    assert.equal((await names(storeUrl)).filter((name) => name === key).length, 1);

    const other = freshKey('race-other');
    const a = await begun(paused, other, [insert(`${other}-a`)]);
    const b = await begun(successor, other, [insert(`${other}-b`)]);
    await a.commit(keyBytes(other));
    await assert.rejects(b.commit(keyBytes(other)), { code: 'MARKER_CONFLICT' });
    await b.cancel();
    assert.ok(!(await names(storeUrl)).includes(`${other}-b`));
  });

  it('recovery of a committed key skips: the changes are not run again, even ones that would now fail', async () => {
    const store = await open();
    const key = freshKey('skip');
    const id = await commitOnce(store, key, [insert(key)]);
    const restarted = await open();
    const recovery = restarted.session();
    await recovery.beginRecovery(keyBytes(key));
    assert.equal(recovery.skipping, true);
    await recovery.apply({ sql: 'INSERT INTO no_such_table VALUES (1)' });
    assert.equal(toHex(await recovery.commit(keyBytes(key))), toHex(id));
    assert.equal((await names(storeUrl)).filter((name) => name === key).length, 1);
  });

  it('a rejected statement names its errno and never the password; the session stays failed until cancelled', async () => {
    const store = await open({
      connectionString: undefined,
      host: '127.0.0.1',
      port: server.port,
      user: 'root',
      password: '',
      database: new URL(storeUrl).pathname.slice(1),
    });
    const key = freshKey('reject');
    const session = await begun(store, key, [insert(key)]);
    await assert.rejects(session.apply({ sql: 'INSERT INTO items (nope) VALUES (1)' }), (e: unknown) => {
      assert.equal((e as { code: string }).code, 'CHANGE_REJECTED');
      assert.equal((e as { detail: { errno: number } }).detail.errno, 1054);
      return true;
    });
    await assert.rejects(session.apply(insert('after')), { code: 'CHANGE_REJECTED' });
    await session.cancel();
    assert.ok(!(await names(storeUrl)).includes(key));
  });

  it('refuses a connection without a database at creation, naming the option', async () => {
    await assert.rejects(async () => mysqlStoreType.create({ connectionString: server.url }, ctx), { code: 'INVALID_REQUEST', message: /no database/ });
  });

  describe('xa', () => {
    it('commits through XA PREPARE and XA COMMIT, leaving nothing prepared; prepare then cancel rolls back', async () => {
      const store = await open({ xa: true });
      const key = freshKey('xa');
      const session = await begun(store, key, [insert(key)]);
      await session.prepare(keyBytes(key));
      assert.equal(await prepared(), 1, 'prepared before the commit point');
      assert.equal(toHex(await session.commit(keyBytes(key))), toHex(storeId([insert(key)])));
      assert.equal(await prepared(), 0);
      assert.ok((await names(storeUrl)).includes(key));

      const undone = freshKey('xa-cancel');
      const cancelled = await begun(store, undone, [insert(undone)]);
      await cancelled.prepare(keyBytes(undone));
      await cancelled.cancel();
      assert.equal(await prepared(), 0);
      assert.ok(!(await names(storeUrl)).includes(undone));
    });

    it('prepared work survives a server kill; orphan resolution commits, rolls back or keeps it as decided', async () => {
      const crashed = await open({ xa: true });
      const [kept, committed, rolledBack] = [freshKey('xa-keep'), freshKey('xa-commit'), freshKey('xa-rollback')];
      for (const key of [kept, committed, rolledBack]) {
        const session = await begun(crashed, key, [insert(key)]);
        await session.prepare(keyBytes(key));
      }
      await server.kill('SIGKILL');
      await server.restart();
      assert.equal(await prepared(), 3, 'XA RECOVER lists the prepared work after the restart');

      const adopter = await open({ xa: true });
      const asked: string[] = [];
      await adopter.resolveOrphans?.(async (keyOfOrphan) => {
        const key = Buffer.from(keyOfOrphan).toString();
        asked.push(key);
        return key === committed ? 'commit' : key === rolledBack ? 'rollback' : 'keep';
      });
      assert.deepEqual(asked.sort(), [committed, kept, rolledBack].sort());
      const landed = await names(storeUrl);
      assert.ok(landed.includes(committed));
      assert.ok(!landed.includes(rolledBack));
      assert.ok(!landed.includes(kept));
      assert.equal(await prepared(), 1);
      assert.equal((await markers(storeUrl)).filter((row) => row.key.toString() === committed).length, 1, 'the marker committed with the data');

      // A fresh begin of the kept key waits for its fate; recovery commits it instead of re-applying.
      await assert.rejects(begun(adopter, kept, [insert(kept)]), { code: 'SESSION_BUSY' });
      const recovery = adopter.session();
      await recovery.beginRecovery(keyBytes(kept));
      assert.equal(recovery.skipping, true);
      assert.equal(toHex(await recovery.commit(keyBytes(kept))), toHex(storeId([insert(kept)])));
      assert.equal(await prepared(), 0);
      assert.equal((await names(storeUrl)).filter((name) => name === kept).length, 1);
    });

    it(`refuses keys longer than ${XA_MAX_KEY_BYTES} bytes at begin`, async () => {
      const store = await open({ xa: true });
      await assert.rejects(begun(store, 'k'.repeat(XA_MAX_KEY_BYTES + 1), []), { code: 'INVALID_REQUEST', message: /at most/ });
      await commitOnce(store, `${'k'.repeat(XA_MAX_KEY_BYTES - 12)}${process.pid}`.slice(0, XA_MAX_KEY_BYTES), [insert('longest key')]);
    });

    it('commitd SIGKILLed past its commit point: the restarted instance commits the prepared work, once', async () => {
      const dir = makeTempDir('mysql-xa-crash');
      try {
        const stores = [{ name: 'shop', type: 'mysql', options: { connectionString: storeUrl, xa: true } }];
        const key = freshKey('xa-crash');
        const changes = { shop: [insert(key)] };
        const doomed = await startProcess({ dir: join(dir, 'a'), stores }, 'commit.afterIntent=crash');
        await assert.rejects(doomed.request('POST', '/v1/commits', { key, changes }));
        assert.equal((await doomed.process.waitForExit(20_000)).signal, 'SIGKILL');
        const restarted = await startProcess({ dir: join(dir, 'a'), stores });
        try {
          const shown = await restarted.request('GET', `/v1/sessions/${key}`);
          assert.equal(shown.body.state, 'committed', JSON.stringify(shown.body));
          assert.equal(shown.body.sessionId, sessionIdOfChanges(changes));
          assert.equal((await names(storeUrl)).filter((name) => name === key).length, 1);
          assert.equal(await prepared(), 0);
        } finally {
          await restarted.process.stop();
        }
      } finally {
        await removeTempDir(dir);
      }
    });
  });
});

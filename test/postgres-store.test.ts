/** What only the postgres store type does; what every store type does is in test/contract/postgres.test.ts. */
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, afterEach, before, describe, it, type TestContext } from 'node:test';
import pg from 'pg';
import { pino } from 'pino';
import { ChangeRejectedError, StoreUnavailableError } from '../src/stores/helper.ts';
import { postgresStoreType, TWO_PHASE_MAX_KEY_BYTES, type PostgresChange, type PostgresOptions } from '../src/stores/postgres/store.ts';
import type { Store } from '../src/stores/api.ts';
import { describeKey, keyBytes, toHex } from '../src/core/keys.ts';
import { ChangeHasher } from '../src/core/session-id.ts';
import { postgresBinDir, startPostgres, type PostgresServer } from './harness/postgres.ts';
import { skipOrFail } from './harness/require.ts';
import { begun, commitOnce } from './support/store-session.ts';

const ctx = { name: 'orders', logger: pino({ level: 'silent' }), dataDir: '.', retentionSeconds: 60 };

/** The session ID a store computes for `changes`. */
function idOf(changes: readonly PostgresChange[]): string {
  const hasher = new ChangeHasher();
  for (const change of changes) hasher.add(change);
  return toHex(hasher.digest());
}

describe('postgres store', () => {
  // One server for the suite, with prepared transactions enabled; tests use their own tables and keys.
  let server: PostgresServer | undefined;
  let stores: Store<PostgresChange>[] = [];

  before(async () => {
    if (postgresBinDir()) server = await startPostgres({ twoPhase: true });
  });
  afterEach(async () => {
    for (const store of stores) await store.close();
    stores = [];
  });
  after(async () => {
    await server?.cleanup();
  });

  function requireServer(t: TestContext): PostgresServer | undefined {
    if (!server) skipOrFail(t, 'PostgreSQL server binaries not found (set PG_BINDIR or install postgresql)');
    return server;
  }

  async function open(options: Partial<PostgresOptions> = {}): Promise<Store<PostgresChange>> {
    const store = await postgresStoreType.create({ connectionString: (server as PostgresServer).connectionString, ...options }, ctx);
    stores.push(store);
    return store;
  }

  /** Runs SQL on a connection of its own, as another client of the database would. */
  async function query<T extends pg.QueryResultRow>(sql: string, params: unknown[] = []): Promise<T[]> {
    const client = new pg.Client({ connectionString: (server as PostgresServer).connectionString });
    await client.connect();
    try {
      return (await client.query<T>(sql, params)).rows;
    } finally {
      await client.end();
    }
  }

  async function createTable(name: string): Promise<void> {
    await query(`CREATE TABLE ${name} (id SERIAL PRIMARY KEY, name TEXT NOT NULL)`);
  }

  const insert = (table: string, name: string): PostgresChange => ({ sql: `INSERT INTO ${table} (name) VALUES ($1)`, params: [name] });
  const names = async (table: string): Promise<string[]> => (await query<{ name: string }>(`SELECT name FROM ${table} ORDER BY id`)).map((row) => row.name);
  const marker = async (key: string): Promise<string | undefined> =>
    (await query<{ session_id: string }>('SELECT session_id FROM commitd_sessions WHERE key = $1', [key]))[0]?.session_id;
  const preparedGids = async (): Promise<string[]> => (await query<{ gid: string }>('SELECT gid FROM pg_prepared_xacts ORDER BY gid')).map((row) => row.gid);

  it('keeps its marker row in commitd_sessions: the session ID in hex and when it committed', async (t) => {
    if (!requireServer(t)) return;
    const store = await open();
    await createTable('t_commit');
    const id = await commitOnce(store, 'pg-commit', [insert('t_commit', 'a')]);
    assert.equal(await marker('pg-commit'), toHex(id));
    const [row] = await query<{ committed_at: Date }>("SELECT committed_at FROM commitd_sessions WHERE key = 'pg-commit'");
    assert.ok(row?.committed_at instanceof Date);
  });

  it('two committers of one key (a paused owner and its successor): the data lands once', async (t) => {
    if (!requireServer(t)) return;
    const [paused, successor] = [await open(), await open()];
    await createTable('t_race');
    const same = [insert('t_race', 'x')];

    // Same changes, the loser's marker insert waiting on the winner's open transaction.
    const first = await begun(paused, 'pg-race', same);
    const second = await begun(successor, 'pg-race', same);
    await first.prepare(keyBytes('pg-race'));
    const loser = second.commit(keyBytes('pg-race'));
    const winnerId = await first.commit(keyBytes('pg-race'));
    assert.equal(toHex(await loser), toHex(winnerId));
    assert.deepEqual(await names('t_race'), ['x']);

    // Other changes: the loser fails with MARKER_CONFLICT and its data is rolled back.
    const a = await begun(paused, 'pg-race-2', [insert('t_race', 'from-a')]);
    const b = await begun(successor, 'pg-race-2', [insert('t_race', 'from-b')]);
    await a.commit(keyBytes('pg-race-2'));
    await assert.rejects(b.commit(keyBytes('pg-race-2')), { code: 'MARKER_CONFLICT' });
    await b.cancel();
    assert.deepEqual(await names('t_race'), ['x', 'from-a']);
  });

  it('reports a rejected statement with its SQLSTATE, never the connection string; the session stays failed', async (t) => {
    const pgServer = requireServer(t);
    if (!pgServer) return;
    const secret = 's3cret-password';
    const connectionString = pgServer.connectionString.replace('postgres@', `postgres:${secret}@`);
    const store = await open({ connectionString });
    await createTable('t_reject');
    const session = await begun(store, 'pg-reject', [insert('t_reject', 'before')]);
    const err = await session.apply({ sql: 'INSERT INTO t_missing VALUES (1)' }).then(
      () => assert.fail('expected a rejection'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof ChangeRejectedError);
    assert.equal(err.code, 'CHANGE_REJECTED');
    assert.equal(err.detail.sqlstate, '42P01');
    assert.match(String(err.detail.message), /t_missing/);
    for (const text of [err.message, JSON.stringify(err.detail)]) {
      assert.ok(!text.includes(secret) && !text.includes(connectionString), text);
    }
    // The transaction is aborted: every later step says so.
    await assert.rejects(session.apply(insert('t_reject', 'after')), (e: unknown) => {
      assert.ok(e instanceof ChangeRejectedError);
      assert.equal(e.detail.sqlstate, '25P02');
      assert.match(e.message, /aborted by an earlier rejected change \(42P01/);
      return true;
    });
    await assert.rejects(session.commit(keyBytes('pg-reject')), ChangeRejectedError);
    await session.cancel();
    assert.deepEqual(await names('t_reject'), []);
    assert.equal(await marker('pg-reject'), undefined);
    // The store (and its pool) goes on.
    await commitOnce(store, 'pg-reject-2', [insert('t_reject', 'fine')]);
    assert.deepEqual(await names('t_reject'), ['fine']);
  });

  it('refuses statements that would end or escape the transaction, and multi-statement strings', async (t) => {
    if (!requireServer(t)) return;
    const store = await open();
    await createTable('t_verbs');
    for (const sql of ['COMMIT', ' /* sneaky */ rollback', 'BEGIN', "PREPARE TRANSACTION 'x'", 'SAVEPOINT s']) {
      const session = await begun(store, `pg-verbs-${sql.length}`, []);
      await assert.rejects(session.apply({ sql }), { code: 'CHANGE_REJECTED' }, sql);
      await session.cancel();
    }
    const session = await begun(store, 'pg-verbs-multi', []);
    await assert.rejects(session.apply({ sql: "INSERT INTO t_verbs (name) VALUES ('a'); COMMIT" }), (e: unknown) => {
      assert.ok(e instanceof ChangeRejectedError);
      assert.equal(e.detail.sqlstate, '42601');
      return true;
    });
    await session.cancel();
    // SET (even SET LOCAL) is refused by the guard: see test/boundary-postgres.test.ts.
    await commitOnce(store, 'pg-verbs-ok', [{ sql: 'SET CONSTRAINTS ALL IMMEDIATE' }, insert('t_verbs', 'ok')]);
    assert.deepEqual(await names('t_verbs'), ['ok']);
  });

  it('bounds how long a stalled session holds its row locks (idleInTransactionTimeoutMs)', async (t) => {
    if (!requireServer(t)) return;
    const store = await open({ idleInTransactionTimeoutMs: 1000 });
    await query('CREATE TABLE t_idle (id INT PRIMARY KEY, n INT NOT NULL)');
    await query('INSERT INTO t_idle VALUES (1, 0)');
    const bump: PostgresChange = { sql: 'UPDATE t_idle SET n = n + 1 WHERE id = 1' };
    const stalled = await begun(store, 'pg-idle-a', [bump]);
    const started = Date.now();
    const next = await begun(store, 'pg-idle-b', [bump]);
    const waited = Date.now() - started;
    assert.ok(waited < 4000, `the second session waited ${waited} ms for the row lock`);
    await next.commit(keyBytes('pg-idle-b'));
    // The server ended the stalled session's connection; before its commit point that heals
    // (docs/recovery.md, "What heals"): a new connection, the change applied again, once.
    const id = await stalled.commit(keyBytes('pg-idle-a'));
    assert.deepEqual(await query('SELECT n FROM t_idle'), [{ n: 2 }]);
    assert.equal(await marker('pg-idle-a'), toHex(id));
  });

  describe('two-phase', () => {
    it('commits through PREPARE TRANSACTION and leaves nothing prepared', async (t) => {
      if (!requireServer(t)) return;
      const store = await open({ twoPhase: true });
      await createTable('t_2pc');
      const id = await commitOnce(store, 'pg-2pc', [insert('t_2pc', 'a')]);
      assert.deepEqual(await names('t_2pc'), ['a']);
      assert.equal(await marker('pg-2pc'), toHex(id));
      assert.deepEqual(await preparedGids(), []);
    });

    it('resolveOrphans commits, rolls back or keeps what a crashed instance prepared', async (t) => {
      if (!requireServer(t)) return;
      await createTable('t_orphans');
      const crashed = await open({ twoPhase: true });
      for (const key of ['pg-orphan-commit', 'pg-orphan-rollback', 'pg-orphan-keep']) {
        const session = await begun(crashed, key, [insert('t_orphans', key)]);
        await session.prepare(keyBytes(key));
      }
      // The crash: the sessions never commit; the prepared work outlives the pool.
      await crashed.close();
      stores = stores.filter((store) => store !== crashed);
      assert.equal((await preparedGids()).length, 3);
      assert.deepEqual(await names('t_orphans'), []);

      const restarted = await open({ twoPhase: true });
      const asked: string[] = [];
      const decisions: Record<string, 'commit' | 'rollback' | 'keep'> = {
        'pg-orphan-commit': 'commit',
        'pg-orphan-rollback': 'rollback',
        'pg-orphan-keep': 'keep',
      };
      await restarted.resolveOrphans?.(async (key) => {
        asked.push(describeKey(key));
        return decisions[describeKey(key)] ?? 'keep';
      });
      assert.deepEqual(asked.sort(), Object.keys(decisions).sort());
      assert.deepEqual(await names('t_orphans'), ['pg-orphan-commit']);
      assert.equal(await marker('pg-orphan-commit'), idOf([insert('t_orphans', 'pg-orphan-commit')]));
      assert.equal(await marker('pg-orphan-rollback'), undefined);
      assert.equal((await preparedGids()).length, 1);

      // A fresh begin on the key still prepared is refused until it is resolved.
      await assert.rejects(restarted.session().begin(keyBytes('pg-orphan-keep')), { code: 'SESSION_BUSY' });
      await restarted.resolveOrphans?.(async () => 'rollback');
      assert.deepEqual(await preparedGids(), []);
      await commitOnce(restarted, 'pg-orphan-keep', [insert('t_orphans', 'retried')]);
      assert.deepEqual(await names('t_orphans'), ['pg-orphan-commit', 'retried']);
    });

    it('an adopter commits the prepared work instead of re-applying it', async (t) => {
      if (!requireServer(t)) return;
      await createTable('t_adopt');
      const changes = [insert('t_adopt', 'prepared')];
      const crashed = await open({ twoPhase: true });
      const owner = await begun(crashed, 'pg-adopt', changes);
      await owner.prepare(keyBytes('pg-adopt'));

      const adopter = (await open({ twoPhase: true })).session();
      await adopter.beginRecovery(keyBytes('pg-adopt'));
      assert.equal(adopter.skipping, true);
      for (const change of changes) await adopter.apply(change);
      const id = await adopter.commit(keyBytes('pg-adopt'));
      assert.equal(toHex(id), idOf(changes));
      assert.deepEqual(await names('t_adopt'), ['prepared']);
      assert.deepEqual(await preparedGids(), []);

      // The paused owner wakes up and commits: its prepared transaction is gone, the marker is its own.
      assert.equal(toHex(await owner.commit(keyBytes('pg-adopt'))), toHex(id));
      assert.deepEqual(await names('t_adopt'), ['prepared']);
    });

    it(`refuses keys longer than ${TWO_PHASE_MAX_KEY_BYTES} bytes at begin`, async (t) => {
      if (!requireServer(t)) return;
      const store = await open({ twoPhase: true });
      await commitOnce(store, 'k'.repeat(TWO_PHASE_MAX_KEY_BYTES), []);
      await assert.rejects(store.session().begin(keyBytes('k'.repeat(TWO_PHASE_MAX_KEY_BYTES + 1))), {
        code: 'INVALID_REQUEST',
        message: /at most 91 bytes/,
      });
    });

    it('fails at creation when the server does not allow prepared transactions', async (t) => {
      if (!requireServer(t)) return;
      const plain = await startPostgres();
      try {
        await assert.rejects(async () => postgresStoreType.create({ connectionString: plain.connectionString, twoPhase: true }, ctx), {
          code: 'INVALID_REQUEST',
          message: /max_prepared_transactions = 0/,
        });
      } finally {
        await plain.cleanup();
      }
    });
  });

  // Last: it kills and restarts the server.
  it('a connection lost mid-session fails the next step clearly; the process and the store go on', async (t) => {
    const pgServer = requireServer(t);
    if (!pgServer) return;
    const store = await open();
    await createTable('t_lost');
    const session = await begun(store, 'pg-lost', [insert('t_lost', 'lost')]);
    await pgServer.kill('SIGKILL');
    // The postmaster is gone at once; its backend may answer one last statement before it dies.
    const lostStep = async () => {
      for (let attempt = 0; attempt < 50; attempt++) {
        await session.apply(insert('t_lost', 'more'));
        await sleep(100);
      }
    };
    await assert.rejects(lostStep(), (e: unknown) => {
      assert.ok(e instanceof StoreUnavailableError);
      assert.match(e.message, /lost the session's connection/);
      assert.ok(!e.message.includes(pgServer.connectionString));
      return true;
    });
    await session.cancel();
    await assert.rejects(commitOnce(store, 'pg-lost-down', []), { code: 'UNAVAILABLE' });
    await pgServer.restart();
    await commitOnce(store, 'pg-lost', [insert('t_lost', 'after restart')]);
    assert.deepEqual(await names('t_lost'), ['after restart']);
  });
});

/** What only the sqlite store type does; what every store type does is in test/contract/sqlite.test.ts. */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { pino } from 'pino';
import { ChangeRejectedError } from '../src/stores/helper.ts';
import { sqliteStoreType, type SqliteChange, type SqliteOptions } from '../src/stores/sqlite/store.ts';
import type { Store } from '../src/stores/api.ts';
import { keyBytes, toHex } from '../src/core/keys.ts';
import { begun, commitOnce } from './support/store-session.ts';

const writerFixture = fileURLToPath(new URL('./fixtures/sqlite-writer.ts', import.meta.url));

describe('sqlite store', () => {
  let dir: string;
  let path: string;
  let stores: Store<SqliteChange>[];

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'commitd-sqlite-'));
    path = join(dir, 'nested', 'store.db');
    stores = [];
  });
  afterEach(async () => {
    for (const store of stores) await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  async function open(options: Partial<SqliteOptions> = {}): Promise<Store<SqliteChange>> {
    const store = await sqliteStoreType.create({ path, ...options }, { name: 'main', logger: pino({ level: 'silent' }), dataDir: dir, retentionSeconds: 60 });
    stores.push(store);
    return store;
  }

  /** A store with an `items` table whose `name` is unique. */
  async function openWithItems(options: Partial<SqliteOptions> = {}): Promise<Store<SqliteChange>> {
    const store = await open(options);
    query((db) => db.exec('CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT UNIQUE, flag)'));
    return store;
  }

  /** Runs `read` on a connection of its own, as another reader of the file would. */
  function query<T>(read: (db: Database.Database) => T): T {
    const db = new Database(path);
    try {
      return read(db);
    } finally {
      db.close();
    }
  }

  const names = () => query((db) => db.prepare('SELECT name FROM items ORDER BY id').pluck().all());
  const markerCount = () => query((db) => db.prepare('SELECT count(*) FROM commitd_sessions').pluck().get());
  const insert = (name: string): SqliteChange => ({ sql: 'INSERT INTO items (name) VALUES (?)', params: [name] });

  it('keeps each marker in commitd_sessions: the key as text, the session ID in hex', async () => {
    const store = await openWithItems();
    const first = await commitOnce(store, 'k1', [insert('a')]);
    const second = await commitOnce(store, 'k2', [insert('b')]);
    const markers = query((db) => db.prepare('SELECT key, session_id FROM commitd_sessions ORDER BY key').all());
    assert.deepEqual(markers, [
      { key: 'k1', session_id: toHex(first) },
      { key: 'k2', session_id: toHex(second) },
    ]);
  });

  it('rejects a bad change at apply, naming the SQLite error', async () => {
    const store = await openWithItems();
    const session = store.session();
    await session.begin(keyBytes('k1'));
    const rejected = (detail: Record<string, unknown>) => (err: unknown) => {
      assert.ok(err instanceof ChangeRejectedError, String(err));
      assert.equal(err.code, 'CHANGE_REJECTED');
      for (const [field, value] of Object.entries(detail)) assert.equal(err.detail[field], value, err.message);
      return true;
    };
    await assert.rejects(session.apply({ sql: 'INSRT INTO items VALUES (1)' }), rejected({ code: 'SQLITE_ERROR' }));
    await assert.rejects(session.apply({ sql: 'INSERT INTO nowhere VALUES (1)' }), rejected({ code: 'SQLITE_ERROR' }));
    await assert.rejects(session.apply({ sql: "INSERT INTO items (name) VALUES ('x'); SELECT 1" }), rejected({ reason: 'statement' }));
    for (const sql of [
      'BEGIN',
      'COMMIT',
      ' -- sneaky\n rollback',
      'SAVEPOINT s',
      'RELEASE s',
      'PRAGMA journal_mode = DELETE',
      'VACUUM',
      "ATTACH 'x.db' AS x",
    ]) {
      await assert.rejects(session.apply({ sql }), rejected({ reason: 'statement' }), sql);
    }
    await assert.rejects(session.apply({ sql: 'INSERT INTO items (name) VALUES (?)', params: [] }), rejected({ reason: 'params' }));
    await assert.rejects(session.apply({ sql: 'INSERT INTO items (name) VALUES (@name)', params: {} }), rejected({ reason: 'params' }));
    await assert.rejects(session.apply({ sql: 'INSERT INTO items (name) VALUES (?)', params: [{ nested: 1 }] }), rejected({ reason: 'params' }));
    // Verdicts are remembered per parameter shape: the same mistake fails again, a fitting shape passes.
    await assert.rejects(session.apply({ sql: 'INSERT INTO items (name) VALUES (?)', params: ['a', 'b'] }), rejected({ reason: 'params' }));
    await assert.rejects(session.apply({ sql: 'INSERT INTO items (name) VALUES (?)', params: ['a', 'b'] }), rejected({ reason: 'params' }));
    await assert.rejects(session.apply({ sql: 'INSERT INTO items (name) VALUES (@name)', params: { other: 'x' } }), rejected({ reason: 'params' }));
    await session.apply({ sql: 'INSERT INTO items (name) VALUES (@name)', params: { name: 'ok' } });
    await session.apply({ sql: 'INSERT INTO items (name) VALUES (?)', params: ['ok2'] });
    await session.cancel();
    assert.deepEqual(names(), []);
  });

  it('reuses compiled statements across schema changes, and rejects one whose table is gone before anything commits', async () => {
    const store = await openWithItems();
    await commitOnce(store, 'k1', [insert('a')]);
    await commitOnce(store, 'k2', [{ sql: 'ALTER TABLE items ADD COLUMN extra TEXT' }, insert('b')]);
    await commitOnce(store, 'k3', [insert('c'), { sql: "UPDATE items SET extra = 'x' WHERE name = ?", params: ['c'] }]);
    assert.deepEqual(
      query((db) => db.prepare('SELECT name, extra FROM items ORDER BY id').all()),
      [
        { name: 'a', extra: null },
        { name: 'b', extra: null },
        { name: 'c', extra: 'x' },
      ],
    );
    await commitOnce(store, 'k4', [{ sql: 'DROP TABLE items' }]);
    const session = store.session();
    await session.begin(keyBytes('k5'));
    // The INSERT compiled earlier is still cached; either step may refuse it, the commit must not pass.
    const attempt = (async () => {
      await session.apply(insert('d'));
      return session.commit(keyBytes('k5'));
    })();
    await assert.rejects(attempt, ChangeRejectedError);
    await session.cancel().catch(() => undefined);
    assert.equal(markerCount(), 4);
    await commitOnce(store, 'k6', [{ sql: 'CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)' }]);
    await commitOnce(store, 'k7', [insert('e')]);
    assert.deepEqual(names(), ['e']);
  });

  it('binds named params, booleans as 1/0 and integral numbers as INTEGER', async () => {
    const store = await openWithItems();
    await commitOnce(store, 'k1', [
      { sql: 'INSERT INTO items (name, flag) VALUES (@name, $flag)', params: { name: 'yes', flag: true } },
      { sql: 'INSERT INTO items (name, flag) VALUES (?, ?)', params: ['no', false] },
      { sql: 'INSERT INTO items (name, flag) VALUES (?, ?)', params: ['five', 5] },
    ]);
    const rows = query((db) => db.prepare('SELECT flag, typeof(flag) AS kind FROM items ORDER BY id').all());
    assert.deepEqual(rows, [
      { flag: 1, kind: 'integer' },
      { flag: 0, kind: 'integer' },
      { flag: 5, kind: 'integer' },
    ]);
  });

  it('a constraint failure at prepare rejects the change and writes nothing', async () => {
    const store = await openWithItems();
    await commitOnce(store, 'k0', [insert('taken')]);
    const session = await begun(store, 'k1', [insert('fresh'), insert('taken')]);
    await assert.rejects(session.prepare(keyBytes('k1')), (err: unknown) => {
      assert.ok(err instanceof ChangeRejectedError);
      assert.equal(err.detail.code, 'SQLITE_CONSTRAINT_UNIQUE');
      assert.equal(err.detail.change, 1);
      return true;
    });
    await session.cancel();
    assert.deepEqual(names(), ['taken']);
    assert.equal(markerCount(), 1);
    // The write lock was released: the next session commits.
    await commitOnce(store, 'k2', [insert('after')]);
    assert.deepEqual(names(), ['taken', 'after']);
  });

  it('two committers racing on one key apply the data once; the loser skips', async () => {
    // As a paused instance and its successor would: separate connections on one file.
    const paused = await openWithItems();
    const successor = await open();
    const changes = [insert('once'), { sql: 'UPDATE items SET flag = coalesce(flag, 0) + 1' }];
    const racers = [paused.session(), successor.session(), paused.session()];
    await racers[0]!.begin(keyBytes('k1'));
    await racers[1]!.beginRecovery(keyBytes('k1'));
    await racers[2]!.begin(keyBytes('k1'));
    for (const racer of racers) for (const change of changes) await racer.apply(change);
    const ids = await Promise.all(racers.map((racer) => racer.commit(keyBytes('k1'))));
    assert.equal(new Set(ids.map(toHex)).size, 1);
    assert.deepEqual(
      query((db) => db.prepare('SELECT name, flag FROM items').all()),
      [{ name: 'once', flag: 1 }],
    );
    assert.equal(markerCount(), 1);
    // Every racer finished cleanly: the store takes new sessions.
    await commitOnce(successor, 'k2', [insert('next')]);
    assert.deepEqual(names(), ['once', 'next']);
  });

  it('50 concurrent sessions on one store all commit, in FIFO order', async () => {
    const store = await openWithItems();
    const keys = Array.from({ length: 50 }, (_, i) => `k${String(i).padStart(2, '0')}`);
    const sessions = await Promise.all(keys.map((key) => begun(store, key, [insert(key)])));
    await Promise.all(sessions.map((session, i) => session.commit(keyBytes(keys[i]!))));
    // Sessions that asked for the write lock in order got it in order.
    assert.deepEqual(names(), keys);
    assert.equal(markerCount(), 50);
  });

  describe('group commit', () => {
    /** A session with `changes` applied, prepared: it holds the write lock (or queues for it). */
    async function prepared(store: Store<SqliteChange>, key: string, changes: SqliteChange[]) {
      const session = await begun(store, key, changes);
      return { session, preparing: session.prepare(keyBytes(key)) };
    }
    const settled = async (promise: Promise<unknown>) =>
      Promise.race([
        promise.then(
          () => true,
          () => true,
        ),
        new Promise((r) => setTimeout(() => r(false), 50)),
      ]);

    it('a decided session waits for the next one to decide, then both are durable with one COMMIT', async () => {
      const store = await openWithItems();
      const a = await prepared(store, 'a', [insert('a')]);
      await a.preparing;
      const b = await prepared(store, 'b', [insert('b')]);
      assert.equal(await settled(b.preparing), false, 'b queues for the write lock');
      await a.session.decide?.(keyBytes('a'));
      await b.preparing;
      const aCommitted = a.session.commit(keyBytes('a'));
      assert.equal(await settled(aCommitted), false, 'a is not reported committed before it is durable');
      assert.deepEqual(names(), [], 'nothing is visible to other connections yet');
      await b.session.decide?.(keyBytes('b'));
      const [idA, idB] = await Promise.all([aCommitted, b.session.commit(keyBytes('b'))]);
      assert.deepEqual(names(), ['a', 'b']);
      assert.equal(markerCount(), 2);
      assert.notEqual(toHex(idA), toHex(idB));
    });

    it('a session rolled back after joining a group undoes only its own writes', async () => {
      const store = await openWithItems();
      const a = await prepared(store, 'a', [insert('a')]);
      await a.preparing;
      const b = await prepared(store, 'b', [insert('b'), { sql: "UPDATE items SET flag = 'b' WHERE name = 'a'" }]);
      await a.session.decide?.(keyBytes('a'));
      await b.preparing;
      const aCommitted = a.session.commit(keyBytes('a'));
      await b.session.cancel();
      await aCommitted;
      assert.deepEqual(
        query((db) => db.prepare('SELECT name, flag FROM items').all()),
        [{ name: 'a', flag: null }],
      );
      assert.equal(markerCount(), 1);
    });

    it('a session sees the decided writes before it, and a change that conflicts with them is rejected alone', async () => {
      const store = await openWithItems();
      const a = await prepared(store, 'a', [insert('dup'), { sql: 'UPDATE items SET flag = 1' }]);
      await a.preparing;
      const b = await prepared(store, 'b', [insert('dup')]);
      const c = await prepared(store, 'c', [{ sql: 'UPDATE items SET flag = flag + 1' }]);
      await a.session.decide?.(keyBytes('a'));
      await assert.rejects(b.preparing, (err: unknown) => err instanceof ChangeRejectedError && /UNIQUE/.test(err.message));
      await c.preparing;
      await c.session.decide?.(keyBytes('c'));
      await Promise.all([a.session.commit(keyBytes('a')), c.session.commit(keyBytes('c'))]);
      assert.deepEqual(
        query((db) => db.prepare('SELECT name, flag FROM items').all()),
        [{ name: 'dup', flag: 2 }],
      );
      assert.equal(markerCount(), 2);
    });

    it('a second committer of a key whose marker waits in the group skips only once that marker is durable', async () => {
      const store = await openWithItems();
      const first = await prepared(store, 'k', [insert('once')]);
      await first.preparing;
      const second = store.session();
      await second.beginRecovery(keyBytes('k'));
      await second.apply(insert('once'));
      const secondCommitted = second.commit(keyBytes('k'));
      await first.session.decide?.(keyBytes('k'));
      const [firstId, secondId] = await Promise.all([first.session.commit(keyBytes('k')), secondCommitted]);
      assert.equal(toHex(secondId), toHex(firstId));
      assert.deepEqual(names(), ['once']);
      assert.equal(markerCount(), 1);
    });

    it('when SQLite rolls back the whole transaction, the decided sessions in it fail instead of joining the next one', async () => {
      const store = await openWithItems();
      // RAISE(ROLLBACK) ends the whole transaction, as SQLite does on some I/O errors.
      query((db) => db.exec("CREATE TRIGGER no_boom BEFORE INSERT ON items WHEN NEW.name = 'boom' BEGIN SELECT RAISE(ROLLBACK, 'boom refused'); END"));
      const a = await prepared(store, 'a', [insert('a')]);
      await a.preparing;
      const b = await prepared(store, 'b', [insert('boom')]);
      await a.session.decide?.(keyBytes('a'));
      await assert.rejects(b.preparing, /boom refused/);
      const c = await prepared(store, 'c', [insert('c')]);
      await c.preparing;
      await c.session.decide?.(keyBytes('c'));
      await assert.rejects(a.session.commit(keyBytes('a')), /was rolled back/);
      await c.session.commit(keyBytes('c'));
      assert.deepEqual(names(), ['c']);
      assert.equal(markerCount(), 1);
    });

    it('closing the store fails the decided sessions still waiting, and none of their writes remain', async () => {
      const store = await openWithItems();
      const a = await prepared(store, 'a', [insert('a')]);
      await a.preparing;
      const b = await prepared(store, 'b', [insert('b')]);
      await a.session.decide?.(keyBytes('a'));
      await b.preparing;
      // Its answer crosses from the store's thread while close() is still under way.
      const aFailed = assert.rejects(a.session.commit(keyBytes('a')), /closed before its commit was durable/);
      await store.close();
      stores.splice(stores.indexOf(store), 1);
      await aFailed;
      assert.deepEqual(names(), []);
    });
  });

  it('does not hold the write lock between applies', async () => {
    const store = await openWithItems();
    const slow = store.session();
    await slow.begin(keyBytes('slow'));
    await slow.apply(insert('slow-1'));
    await commitOnce(store, 'fast', [insert('fast')]);
    await slow.apply(insert('slow-2'));
    await slow.commit(keyBytes('slow'));
    assert.deepEqual(names(), ['fast', 'slow-1', 'slow-2']);
  });

  it('waits asynchronously for another process holding the write lock', async (t) => {
    const store = await openWithItems();
    const child = spawn(process.execPath, ['--import', 'tsx', writerFixture, path], { stdio: ['pipe', 'pipe', 'inherit'] });
    t.after(() => child.kill('SIGKILL'));
    const lines = createInterface({ input: child.stdout });
    const nextLine = () => new Promise<string>((resolve) => lines.once('line', resolve));
    assert.equal(await nextLine(), 'locked');

    const session = await begun(store, 'k1', [insert('ours')]);
    let ticks = 0;
    const ticker = setInterval(() => (ticks += 1), 10);
    let settled = false;
    const committing = session.commit(keyBytes('k1')).finally(() => (settled = true));
    await new Promise((resolve) => setTimeout(resolve, 300));
    clearInterval(ticker);
    assert.equal(settled, false, 'prepare must wait for the other process');
    assert.ok(ticks >= 10, `the event loop kept running while waiting (${ticks} ticks)`);

    child.stdin.write('go\n');
    assert.equal(await nextLine(), 'committed');
    await committing;
    assert.deepEqual(names(), ['from-other-process', 'ours']);
  });

  it('fails as unavailable when the other process holds the lock past busyTimeoutMs', async (t) => {
    const store = await openWithItems({ busyTimeoutMs: 100 });
    const child = spawn(process.execPath, ['--import', 'tsx', writerFixture, path], { stdio: ['pipe', 'pipe', 'inherit'] });
    t.after(() => child.kill('SIGKILL'));
    const lines = createInterface({ input: child.stdout });
    assert.equal(await new Promise<string>((resolve) => lines.once('line', resolve)), 'locked');
    const session = await begun(store, 'k1', [insert('ours')]);
    await assert.rejects(session.commit(keyBytes('k1')), { code: 'UNAVAILABLE' });
    await session.cancel();
    child.stdin.write('go\n');
    await new Promise((resolve) => child.once('exit', resolve));
    await commitOnce(store, 'k1', [insert('ours')]);
    assert.deepEqual(names(), ['from-other-process', 'ours']);
  });
});

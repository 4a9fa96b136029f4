/**
 * On the embedded KV a session asks all its sqlite stores to prepare in one synchronous
 * step, one-shots and interactive sessions alike (`Session.#prepareAll`), so each store
 * holds its write lock only for its own prepare's round trip, not also for the next
 * store's. The danger is a deadlock: two sessions each holding one store's lock and
 * waiting for the other's. It cannot happen while every session asks every such store at
 * once: each store's queue then serves sessions in the order they asked.
 *
 * The first test builds the interleaving that would deadlock if any session asked one
 * store after the other: another process holds store `audit`'s file lock, so that the
 * interactive session X, asking first, waits there; a one-shot Y asks next, while `main`
 * is still free. Asked one by one, X would hold `audit` and wait for `main`, which Y took
 * and holds while it waits for `audit`.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { setImmediate as turn } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { Worker } from 'node:worker_threads';
import Database from 'better-sqlite3';
import { makeTempDir } from './harness/child.ts';
import { ids, sqliteRun } from './support/rows.ts';
import { sqliteStores, startTestService, type TestService } from './support/service.ts';

/** Counts what the event loop posts to worker threads (only the sqlite stores run on one). */
function countPosts(): { readonly count: () => number; readonly restore: () => void } {
  const original = Worker.prototype.postMessage;
  let posts = 0;
  Worker.prototype.postMessage = function (this: Worker, ...args: Parameters<Worker['postMessage']>) {
    posts += 1;
    return original.apply(this, args);
  };
  return { count: () => posts, restore: () => (Worker.prototype.postMessage = original) };
}

/** Resolves once `count()` reached `n`; fails after a bounded number of event-loop turns. */
async function postsReach(count: () => number, n: number): Promise<void> {
  for (let turns = 0; count() < n; turns += 1) {
    if (turns > 200_000) assert.fail(`only ${count()} of ${n} messages reached the stores' threads`);
    await turn();
  }
}

/** `promise`, or a failure naming `what` if it has not settled within `ms`. */
async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

const STORES = ['audit', 'main', 'zeta'];

describe('a session prepares its sqlite stores together', () => {
  let service: TestService;
  const post = (url: string, body?: unknown) =>
    service.app.inject({ method: 'POST', url, headers: { 'content-type': 'application/json' }, payload: JSON.stringify(body ?? {}) });
  const insert = (id: number) => ({ sql: 'INSERT INTO t (id) VALUES (?)', params: [id] });
  const file = (store: string) => join(service.dir, `${store}.db`);

  before(async () => {
    const dir = makeTempDir('svc');
    service = await startTestService({ kv: 'sqlite', dir, stores: sqliteStores(dir, STORES) });
    for (const store of STORES) sqliteRun(file(store), 'CREATE TABLE t (id INTEGER PRIMARY KEY)');
  });
  after(async () => service?.dispose());

  it('an interactive session waiting for one store and a one-shot over the same stores both commit: no deadlock', async () => {
    assert.equal((await post('/v1/sessions', { key: 'x', stores: ['audit', 'main'] })).statusCode, 201);
    for (const store of ['audit', 'main']) assert.equal((await post('/v1/sessions/x/changes', { store, changes: [insert(1)] })).statusCode, 200);

    // Another process holds audit's file lock: X's prepare there waits (retrying SQLITE_BUSY).
    const holder = new Database(file('audit'));
    holder.exec('BEGIN IMMEDIATE');
    const posts = countPosts();
    let x: ReturnType<typeof post> | undefined;
    let y: ReturnType<typeof post> | undefined;
    try {
      x = post('/v1/sessions/x/commit');
      await postsReach(posts.count, 1);
      const asked = posts.count();
      y = post('/v1/commits', { key: 'y', changes: { audit: [insert(2)], main: [insert(2)] } });
      await postsReach(posts.count, asked + 2);
    } finally {
      posts.restore();
      holder.exec('ROLLBACK');
      holder.close();
    }
    const [committedX, committedY] = await within(Promise.all([x, y]), 20_000, 'the two sessions');
    assert.equal(committedX?.statusCode, 200, committedX?.body);
    assert.equal(committedY?.statusCode, 200, committedY?.body);
    assert.deepEqual(ids(file('audit')), [1, 2]);
    assert.deepEqual(ids(file('main')), [1, 2]);
  });

  it('many one-shot and interactive sessions over overlapping stores all commit, each row once', async () => {
    const sets = [
      ['audit', 'main'],
      ['main', 'zeta'],
      ['audit', 'zeta'],
      ['audit', 'main', 'zeta'],
    ];
    const runs: Promise<void>[] = [];
    for (let i = 0; i < 96; i += 1) {
      const id = 100 + i;
      const stores = sets[i % sets.length] as string[];
      const key = `mixed-${i}`;
      runs.push(
        (async () => {
          if (i % 2 === 0) {
            const changes = Object.fromEntries(stores.map((store) => [store, [insert(id)]]));
            const committed = await post('/v1/commits', { key, changes });
            assert.equal(committed.statusCode, 200, committed.body);
            return;
          }
          assert.equal((await post('/v1/sessions', { key, stores })).statusCode, 201);
          for (const store of stores) assert.equal((await post(`/v1/sessions/${key}/changes`, { store, changes: [insert(id)] })).statusCode, 200);
          const committed = await post(`/v1/sessions/${key}/commit`);
          assert.equal(committed.statusCode, 200, committed.body);
        })(),
      );
    }
    await within(Promise.all(runs), 60_000, '96 sessions');
    for (const store of STORES) {
      const expected = [...Array(96).keys()].filter((i) => (sets[i % sets.length] as string[]).includes(store)).map((i) => 100 + i);
      assert.deepEqual(
        ids(file(store)).filter((id) => id >= 100),
        expected,
        store,
      );
    }
  });
});

/**
 * How many messages a one-shot session sends to each sqlite store's thread (issue 17): one
 * before its commit point (marker lookup, open, changes, prepare), and after it a `decide`
 * that wants no answer and the `commit`. Every message wakes the store's thread, and
 * `postMessage` was the largest cost of commitd's event loop with many sessions in flight.
 * The one-shot's other answers stay as they were: a refused change names its store and
 * index and cancels the session, a committed key replays.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Worker } from 'node:worker_threads';
import { ids, sqliteRun } from './support/rows.ts';
import { startTestService, type TestService } from './support/service.ts';

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

describe('messages to the sqlite stores’ threads', () => {
  let service: TestService;
  before(async () => {
    service = await startTestService({ kv: 'sqlite' });
    for (const store of ['main', 'audit']) sqliteRun(join(service.dir, `${store}.db`), 'CREATE TABLE t (id INTEGER PRIMARY KEY)');
  });
  after(async () => service?.dispose());

  const commit = (key: string, changes: object) => service.app.inject({ method: 'POST', url: '/v1/commits', payload: { key, changes } });
  const insert = (id: number) => ({ sql: 'INSERT INTO t (id) VALUES (?)', params: [id] });

  it('a one-shot over two stores sends three messages to each store: one before its commit point, two after', async () => {
    const posts = countPosts();
    try {
      const committed = await commit('msg-1', { main: [insert(1), insert(2)], audit: [insert(1)] });
      assert.equal(committed.statusCode, 200, committed.body);
      assert.equal(posts.count(), 6);
    } finally {
      posts.restore();
    }
    assert.deepEqual(ids(join(service.dir, 'main.db')), [1, 2]);
    assert.deepEqual(ids(join(service.dir, 'audit.db')), [1]);
  });

  // On the embedded KV a session asks all its sqlite stores at once (`prepareTogether`), so
  // a replay asks each of them once, not only the first in commit order.
  it('a replay of a committed one-shot asks each store once and answers from the result', async () => {
    const changes = { main: [insert(3)], audit: [insert(3)] };
    const first = await commit('msg-2', changes);
    assert.equal(first.statusCode, 200, first.body);
    const posts = countPosts();
    try {
      const replayed = await commit('msg-2', changes);
      assert.equal(replayed.statusCode, 200, replayed.body);
      assert.equal(replayed.json().sessionId, first.json().sessionId);
      assert.equal(posts.count(), 2);
    } finally {
      posts.restore();
    }
    assert.deepEqual(ids(join(service.dir, 'main.db')), [1, 2, 3]);
  });

  it('a refused change names its store and index, cancels the session and leaves the key free', async () => {
    const refused = await commit('msg-3', { main: [insert(4), { sql: 'INSERT INTO missing (id) VALUES (1)' }], audit: [insert(4)] });
    assert.equal(refused.statusCode, 409, refused.body);
    assert.match(refused.json().detail, /changes\[1\]/);
    assert.equal(refused.json().store, 'main');
    const metrics = await service.app.inject({ method: 'GET', url: '/metrics' });
    assert.match(metrics.body, /commitd_sessions_cancelled_total\{reason="error"\} 1/);
    assert.deepEqual(ids(join(service.dir, 'audit.db')), [1, 3], 'nothing of the session reached the other store');

    const retried = await commit('msg-3', { main: [insert(4)], audit: [insert(4)] });
    assert.equal(retried.statusCode, 200, retried.body);
    assert.deepEqual(ids(join(service.dir, 'main.db')), [1, 2, 3, 4]);
  });

  it('a change that fails when it runs, at prepare, fails the one-shot the same way', async () => {
    const refused = await commit('msg-4', { main: [insert(5)], audit: [insert(1)] });
    assert.equal(refused.statusCode, 409, refused.body);
    assert.equal(refused.json().store, 'audit');
    assert.deepEqual(ids(join(service.dir, 'main.db')), [1, 2, 3, 4], 'main rolled back');
  });
});

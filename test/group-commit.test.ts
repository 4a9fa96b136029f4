/**
 * sqlite group commit across a crash: decided sessions share one open transaction until a
 * COMMIT makes them durable, so a SIGKILL can lose several sessions that are all past their
 * commit points, one having read what the one before it wrote. Recovery must roll them
 * forward in the order they first applied.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { makeTempDir, removeTempDir } from './harness/child.ts';
import { startProcess } from './support/process.ts';
import { ids, sqliteRows, sqliteRun } from './support/rows.ts';
import { sqliteStores } from './support/service.ts';
import { waitFor } from './support/wait.ts';

describe('sqlite group commit and a crash', () => {
  const dir = makeTempDir('group');
  after(() => removeTempDir(dir));

  it('sessions of a commit group lost in a crash replay in commit order, not key order', async () => {
    const stores = sqliteStores(dir, ['x', 'y']);
    for (const name of ['x', 'y']) sqliteRun(join(dir, `${name}.db`), 'CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)');
    const xIds = () => ids(join(dir, 'x.db'));
    // Each session stops after committing store x (the first by name); its y writes stay
    // decided in y's open group, which nobody asks to commit yet.
    const doomed = await startProcess({ dir, stores }, 'commit.afterStore.1=delay(60000)');
    const commit = (key: string, y: string) =>
      void doomed
        .request('POST', '/v1/commits', { key, changes: { x: [{ sql: `INSERT INTO t (id) VALUES (${key === 'z-first' ? 1 : 2})` }], y: [{ sql: y }] } })
        .catch(() => undefined);

    // Keys sort the other way round from the order the sessions commit in.
    commit('z-first', "INSERT INTO t (id, v) VALUES (1, 'a')");
    await waitFor('z-first past store x', () => (xIds().includes(1) ? true : undefined));
    commit('a-second', "UPDATE t SET v = v || 'b' WHERE id = 1");
    await waitFor('a-second past store x', () => (xIds().includes(2) ? true : undefined));
    assert.deepEqual(sqliteRows(join(dir, 'y.db'), 'SELECT * FROM t'), [], "y's group is not durable yet");

    await doomed.process.kill('SIGKILL');
    const restarted = await startProcess({ dir, stores });
    try {
      for (const key of ['z-first', 'a-second']) {
        const shown = await restarted.request('GET', `/v1/sessions/${key}`);
        assert.equal(shown.body.state, 'committed', `${key} rolled forward at start-up`);
      }
      // In key order the UPDATE would have run first, on no row, and left 'a'.
      assert.deepEqual(sqliteRows(join(dir, 'y.db'), 'SELECT id, v FROM t'), [{ id: 1, v: 'ab' }]);
      assert.deepEqual(xIds(), [1, 2]);
    } finally {
      await restarted.process.stop();
    }
  });
});

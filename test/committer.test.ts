import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, it } from 'node:test';
import {
  AlreadyCommittedError,
  AlreadyRegisteredError,
  IdempotencyKeyMismatchError,
  InSessionError,
  MultiCommitter,
  NotInSessionError,
  toHex,
  type Kv,
} from '../src/core/index.ts';
import { SqliteKv } from '../src/kv/sqlite.ts';
import { MemoryDatastore } from './support/memory-store.ts';
import { Recording } from './support/recording.ts';

describe('MultiCommitter', () => {
  let dir: string;
  let kv: Kv;
  let journal: string[];
  let alpha: MemoryDatastore;
  let beta: MemoryDatastore;

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'commitd-core-'));
    kv = new SqliteKv({ path: join(dir, 'kv.db') });
    journal = [];
    alpha = new MemoryDatastore();
    beta = new MemoryDatastore();
  });
  afterEach(async () => {
    await kv.close();
    rmSync(dir, { recursive: true, force: true });
  });

  /** A committer over `beta` then `alpha` (registered out of order on purpose). */
  function setup() {
    const b = new Recording('beta', beta.session('beta'), journal);
    const a = new Recording('alpha', alpha.session('alpha'), journal);
    const committer = new MultiCommitter(kv, [
      ['beta', b],
      ['alpha', a],
    ]);
    return { committer, a, b };
  }

  it('two sessions in a row each commit and leave the slot empty', async () => {
    const { committer, a, b } = setup();
    for (const key of ['k1', 'k2']) {
      await committer.begin(key);
      await a.inner.apply({ set: `a-${key}`, value: 1 });
      await b.inner.apply({ set: `b-${key}`, value: 2 });
      const id = await committer.commit(key);
      assert.equal(id.length, 16);
      assert.equal(await kv.get('slot'), undefined);
    }
    assert.equal(alpha.commits, 2);
    assert.deepEqual([...beta.data.keys()], ['b-k1', 'b-k2']);
  });

  it('commits in ascending name order whatever the registration order', async () => {
    const { committer } = setup();
    await committer.begin('k');
    await committer.commit('k');
    assert.deepEqual(journal, ['alpha.begin', 'beta.begin', 'alpha.commit', 'beta.commit']);
    assert.deepEqual(committer.names, ['alpha', 'beta']);
  });

  it('writes the slot before any committable begins', async () => {
    const { committer, a } = setup();
    let slotAtBegin: string | undefined;
    a.onBegin = async () => {
      slotAtBegin = (await kv.get('slot'))?.value;
    };
    await committer.begin('durable-first');
    assert.ok(slotAtBegin, 'slot must be written before begin');
    assert.equal(Buffer.from(JSON.parse(slotAtBegin).key, 'base64').toString(), 'durable-first');
  });

  it('an error in commit cancels every committable and leaves the slot holding the key', async () => {
    const { committer, b } = setup();
    b.failOn = 'commit';
    await committer.begin('k');
    await assert.rejects(committer.commit('k'), /injected commit failure/);
    assert.ok(journal.includes('alpha.cancel') && journal.includes('beta.cancel'));
    assert.equal(committer.inSession, false);
    const slot = await kv.get('slot');
    assert.ok(slot);
    assert.equal(Buffer.from(JSON.parse(slot.value).key, 'base64').toString(), 'k');
  });

  it('begin with the same key after a failed commit recovers on every committable', async () => {
    const { committer, b } = setup();
    b.failOn = 'commit';
    await committer.begin('k');
    await assert.rejects(committer.commit('k'));
    b.failOn = undefined;
    journal.length = 0;
    const { recovery } = await committer.begin('k');
    assert.equal(recovery, true);
    assert.deepEqual(journal, ['alpha.beginRecovery', 'beta.beginRecovery']);
    // alpha committed before beta failed: its marker makes it skip and return the stored ID
    const first = alpha.markers.get('k');
    assert.ok(first);
    await committer.commit('k');
    assert.equal(alpha.commits, 1, 'alpha must not commit twice');
    assert.equal(beta.commits, 1);
    assert.equal(await kv.get('slot'), undefined);
  });

  it('begin with a different key than the slot fails naming both keys', async () => {
    const { committer, b } = setup();
    b.failOn = 'commit';
    await committer.begin('first-key');
    await assert.rejects(committer.commit('first-key'));
    await assert.rejects(committer.begin('second-key'), (err: unknown) => {
      assert.ok(err instanceof IdempotencyKeyMismatchError);
      assert.equal(err.code, 'IDEMPOTENCY_KEY_MISMATCH');
      assert.match(err.message, /first-key/);
      assert.match(err.message, /second-key/);
      return true;
    });
    assert.equal(committer.inSession, false);
  });

  it('commit with another key than the open session fails with IDEMPOTENCY_KEY_MISMATCH', async () => {
    const { committer } = setup();
    await committer.begin('open-key');
    await assert.rejects(committer.commit('other-key'), { code: 'IDEMPOTENCY_KEY_MISMATCH' });
  });

  it('registering a name twice fails', () => {
    const { committer } = setup();
    assert.throws(() => committer.register('alpha', alpha.session('alpha')), AlreadyRegisteredError);
  });

  it('begin while in session fails with IN_SESSION; commit outside one with NOT_IN_SESSION', async () => {
    const { committer } = setup();
    await assert.rejects(committer.commit('k'), (err: unknown) => err instanceof NotInSessionError && err.code === 'NOT_IN_SESSION');
    await committer.begin('k');
    await assert.rejects(committer.begin('k'), (err: unknown) => err instanceof InSessionError && err.code === 'IN_SESSION');
  });

  it('two concurrent begin calls: exactly one wins', async () => {
    const { committer } = setup();
    const results = await Promise.allSettled([committer.begin('k'), committer.begin('k')]);
    assert.equal(results.filter((r) => r.status === 'fulfilled').length, 1);
    const rejected = results.find((r) => r.status === 'rejected');
    assert.ok(rejected && rejected.status === 'rejected' && rejected.reason instanceof InSessionError);
  });

  it('a cancel error never masks the error that caused the cancel', async () => {
    const { committer, a, b } = setup();
    b.failOn = 'commit';
    a.failOn = 'cancel';
    await committer.begin('k');
    await assert.rejects(committer.commit('k'), /beta: injected commit failure/);
  });

  it('an error in begin cancels every committable and keeps the slot', async () => {
    const { committer, b } = setup();
    b.failOn = 'begin';
    await assert.rejects(committer.begin('k'), /injected begin failure/);
    assert.ok(journal.includes('alpha.cancel'));
    assert.equal(committer.inSession, false);
    assert.ok(await kv.get('slot'));
  });

  it('cancel resets the stores and empties the slot so the key can begin afresh', async () => {
    const { committer, a } = setup();
    await committer.begin('k');
    await a.inner.apply({ set: 'x', value: 1 });
    await committer.cancel();
    assert.equal(await kv.get('slot'), undefined);
    assert.equal(alpha.data.size, 0);
    const { recovery } = await committer.begin('k');
    assert.equal(recovery, false);
  });

  it('the session ID depends only on the applied changes', async () => {
    const ids: string[] = [];
    for (const run of [1, 2]) {
      const a = new MemoryDatastore();
      const committer = new MultiCommitter(kv, { one: a.session('one') }, { slotKey: `slot-${run}` });
      await committer.begin(`key-${run}`);
      ids.push(toHex(await committer.commit(`key-${run}`)));
    }
    assert.equal(ids[0], ids[1]);
  });
});

describe('the committable helper', () => {
  it('recovery on a store holding the marker skips: applies ignored, stored ID returned', async () => {
    const store = new MemoryDatastore();
    const key = new TextEncoder().encode('k');
    const first = store.session('s');
    await first.begin(key);
    await first.apply({ set: 'x', value: 1 });
    const id = await first.commit(key);

    const again = store.session('s');
    await again.beginRecovery(key);
    assert.equal(again.skipping, true);
    await again.apply({ set: 'x', value: 999 });
    assert.deepEqual(await again.commit(key), id);
    assert.equal(store.data.get('x'), 1);
    assert.equal(store.commits, 1);
  });

  it('begin with a key the store already committed fails', async () => {
    const store = new MemoryDatastore();
    const key = new TextEncoder().encode('k');
    const first = store.session('s');
    await first.begin(key);
    await first.commit(key);
    await assert.rejects(store.session('s').begin(key), AlreadyCommittedError);
  });

  it('two committers racing on one key: the data is applied once, the loser skips', async () => {
    const store = new MemoryDatastore();
    const key = new TextEncoder().encode('race');
    const [one, two] = [store.session('s'), store.session('s')];
    await one.begin(key);
    await two.beginRecovery(key);
    for (const c of [one, two]) await c.apply({ set: 'n', value: 1 });
    const ids = await Promise.all([one.commit(key), two.commit(key)]);
    assert.deepEqual(ids[0], ids[1]);
    assert.equal(store.commits, 1);
  });

  it('a loser with other changes than the winner fails with MARKER_CONFLICT', async () => {
    const store = new MemoryDatastore();
    const key = new TextEncoder().encode('race');
    const [one, two] = [store.session('s'), store.session('s')];
    await one.begin(key);
    await two.beginRecovery(key);
    await one.apply({ set: 'n', value: 1 });
    await two.apply({ set: 'n', value: 2 });
    await one.commit(key);
    await assert.rejects(two.commit(key), { code: 'MARKER_CONFLICT' });
    assert.equal(store.data.get('n'), 1);
  });

  it('apply outside a session fails with NOT_WRITABLE', async () => {
    await assert.rejects(new MemoryDatastore().session('s').apply({ set: 'a', value: 1 }), { code: 'NOT_WRITABLE' });
  });
});

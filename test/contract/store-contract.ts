/**
 * The store contract: one suite that every store type passes, built in or plugin, as
 * test/kv.test.ts runs one suite against both KV backends. It drives stores the way the
 * coordinator does — begin, apply, prepare, commit, cancel, recovery — and checks what the
 * core contract promises: the ID a commit returns is the hash of the applied changes, the
 * data lands once, the marker refuses a second begin on any instance and makes recovery
 * skip, a rejected change or a cancel leaves nothing, a restarted instance sees what the
 * crashed one committed, and sessions on distinct keys do not get in each other's way.
 *
 * A new store type gets all of this by adding one file, test/contract/<type>.test.ts, that
 * calls `storeContract` with a `StoreTypeUnderTest`: how to start its datastore (through
 * test/harness/ for a server), open a store on it, and sample changes with a way to count
 * how many times they landed. Tests of what only that type does stay in its own file.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, afterEach, before, describe, it, type TestContext } from 'node:test';
import { keyBytes, toHex } from '../../src/core/keys.ts';
import { ID_BYTES, storeId } from '../../src/core/session-id.ts';
import { AlreadyCommittedError } from '../../src/errors/core.ts';
import { ChangeRejectedError, type Store } from '../../src/stores/api.ts';
import { skipOrFail } from '../harness/require.ts';
import { begun, commitOnce } from '../support/store-session.ts';

/** A started datastore of the type under test. */
export interface ContractDatastore<Change> {
  /** A new store instance on this datastore, as another commitd instance, or a restarted one, opens it. */
  open(): Promise<Store<Change>>;
  /** Sample changes (at least two) writing data that `tag` names; each test uses its own tags. */
  changes(tag: string): Change[];
  /** How many times `changes(tag)` landed in the datastore: 1 after a commit, 0 after a cancel. */
  applied(tag: string): Promise<number>;
  /** A change the store refuses with ChangeRejectedError, at apply or at prepare; absent if the type refuses none. */
  readonly rejected?: (tag: string) => Change;
  stop(): Promise<void>;
}

/** A store type as its contract test file describes it. */
export interface StoreTypeUnderTest<Change> {
  readonly name: string;
  /** Why the datastore cannot run here (a server binary missing), if it cannot. */
  unavailable(): string | undefined;
  /**
   * `coordinator`: the type keeps no marker commitd can read in the datastore (a participant
   * whose confirm is idempotent; commitd's result record is its marker). Its begin does not
   * refuse a committed key and its recovery does not skip: recovery commits again, with the
   * same ID, and the effect still lands once.
   */
  readonly marker?: 'datastore' | 'coordinator';
  start(): Promise<ContractDatastore<Change>>;
}

/** Runs the store contract against `type`: one describe, its datastore started once. */
export function storeContract<Change>(type: StoreTypeUnderTest<Change>): void {
  describe(`store contract: ${type.name}`, () => {
    let datastore: ContractDatastore<Change> | undefined;
    let opened: Store<Change>[] = [];
    const reason = type.unavailable();
    const markerInCoordinator = type.marker === 'coordinator';
    // Every session of one key's attempt shares it, as commitd's session record makes them.
    const attemptOf = (key: string) => ({ attempt: `${key}-attempt` });
    // Keys and tags of this run: datastores may be shared with other runs (a marker table, a server).
    const run = randomUUID().slice(0, 8);
    const keyOf = (name: string) => `contract-${run}-${name}`;

    before(async () => {
      if (reason === undefined) datastore = await type.start();
    });
    afterEach(async () => {
      for (const store of opened) await store.close();
      opened = [];
    });
    after(async () => {
      await datastore?.stop();
    });

    /** The started datastore, or undefined when the test was skipped (it fails instead on CI). */
    function started(t: TestContext): ContractDatastore<Change> | undefined {
      if (datastore === undefined) skipOrFail(t, reason ?? `${type.name} did not start`);
      return datastore;
    }

    async function open(ds: ContractDatastore<Change>): Promise<Store<Change>> {
      const store = await ds.open();
      opened.push(store);
      return store;
    }

    it('begin, apply, commit: the data lands once and the ID is the 16-byte hash of the changes', async (t) => {
      const ds = started(t);
      if (!ds) return;
      const store = await open(ds);
      const key = keyOf('commit');
      const changes = ds.changes(key);
      const session = store.session();
      await session.begin(keyBytes(key));
      assert.equal(session.skipping, false);
      for (const change of changes) await session.apply(change);
      const id = await session.commit(keyBytes(key));
      assert.equal(id.length, ID_BYTES);
      assert.equal(toHex(id), toHex(storeId(changes)));
      assert.equal(await ds.applied(key), 1);
    });

    it('prepare then commit returns the same ID; prepare then cancel leaves nothing', async (t) => {
      const ds = started(t);
      if (!ds) return;
      const store = await open(ds);
      const key = keyOf('prepare');
      const session = await begun(store, key, ds.changes(key));
      await session.prepare(keyBytes(key));
      assert.equal(toHex(await session.commit(keyBytes(key))), toHex(storeId(ds.changes(key))));
      assert.equal(await ds.applied(key), 1);

      const undone = keyOf('prepare-cancel');
      const cancelled = await begun(store, undone, ds.changes(undone));
      await cancelled.prepare(keyBytes(undone));
      await cancelled.cancel();
      assert.equal(await ds.applied(undone), 0);
    });

    it('cancel applies nothing, and the key can begin again and commit', async (t) => {
      const ds = started(t);
      if (!ds) return;
      const store = await open(ds);
      const key = keyOf('cancel');
      const session = await begun(store, key, ds.changes(key));
      await session.cancel();
      assert.equal(await ds.applied(key), 0);
      await commitOnce(store, key, ds.changes(key));
      assert.equal(await ds.applied(key), 1);
    });

    it('the marker refuses begin on a committed key, on this instance and on a second one', async (t) => {
      const ds = started(t);
      if (!ds) return;
      const [first, second] = [await open(ds), await open(ds)];
      const key = keyOf('marker');
      const id = await commitOnce(first, key, ds.changes(key), attemptOf(key));
      if (markerInCoordinator) {
        // No store-side marker to refuse with: a second instance's recovery commits again, idempotently.
        const again = second.session(attemptOf(key));
        await again.beginRecovery(keyBytes(key));
        for (const change of ds.changes(key)) await again.apply(change);
        assert.equal(toHex(await again.commit(keyBytes(key))), toHex(id));
      } else {
        await assert.rejects(first.session().begin(keyBytes(key)), AlreadyCommittedError);
        await assert.rejects(second.session().begin(keyBytes(key)), AlreadyCommittedError);
      }
      assert.equal(await ds.applied(key), 1);
    });

    it('recovery of a committed key skips: applies are ignored and commit returns the stored ID', async (t) => {
      const ds = started(t);
      if (!ds) return;
      const store = await open(ds);
      const key = keyOf('skip');
      const id = await commitOnce(store, key, ds.changes(key), attemptOf(key));
      const recovery = store.session(attemptOf(key));
      await recovery.beginRecovery(keyBytes(key));
      assert.equal(recovery.skipping, !markerInCoordinator);
      for (const change of ds.changes(key)) await recovery.apply(change);
      assert.equal(toHex(await recovery.commit(keyBytes(key))), toHex(id));
      assert.equal(await ds.applied(key), 1);
    });

    it('a rejected change fails with ChangeRejectedError; after cancel nothing is applied', async (t) => {
      const ds = started(t);
      if (!ds) return;
      if (!ds.rejected) {
        t.skip(`${type.name} refuses no change`);
        return;
      }
      const store = await open(ds);
      const key = keyOf('rejected');
      const session = await begun(store, key, ds.changes(key));
      const refused = ds.rejected(key);
      await assert.rejects(async () => {
        await session.apply(refused);
        await session.prepare(keyBytes(key));
      }, ChangeRejectedError);
      await session.cancel();
      assert.equal(await ds.applied(key), 0);
      await commitOnce(store, key, ds.changes(key));
      assert.equal(await ds.applied(key), 1);
    });

    it('a new instance after a crash sees the marker, and recovers a session the crash cut short', async (t) => {
      const ds = started(t);
      if (!ds) return;
      const crashed = await open(ds);
      const [done, cut] = [keyOf('crash-done'), keyOf('crash-cut')];
      const id = await commitOnce(crashed, done, ds.changes(done), attemptOf(done));
      // The crashed instance is never heard from again; its open session is cancelled only
      // at the end, so that its connections can be closed.
      const abandoned = await begun(crashed, cut, ds.changes(cut), attemptOf(cut));
      // A participant's roll-forward follows a commit point, so a try that was accepted.
      if (markerInCoordinator) await abandoned.prepare(keyBytes(cut));
      try {
        const restarted = await open(ds);
        if (!markerInCoordinator) await assert.rejects(restarted.session().begin(keyBytes(done)), AlreadyCommittedError);
        const skipped = restarted.session(attemptOf(done));
        await skipped.beginRecovery(keyBytes(done));
        assert.equal(skipped.skipping, !markerInCoordinator);
        if (markerInCoordinator) for (const change of ds.changes(done)) await skipped.apply(change);
        assert.equal(toHex(await skipped.commit(keyBytes(done))), toHex(id));

        const recovery = restarted.session(attemptOf(cut));
        await recovery.beginRecovery(keyBytes(cut));
        assert.equal(recovery.skipping, false);
        for (const change of ds.changes(cut)) await recovery.apply(change);
        assert.equal(toHex(await recovery.commit(keyBytes(cut))), toHex(storeId(ds.changes(cut))));
      } finally {
        // Released, not cancelled, where the type can: the session was recovered past its commit point.
        await (abandoned.release ? abandoned.release() : abandoned.cancel());
      }
      assert.equal(await ds.applied(done), 1);
      assert.equal(await ds.applied(cut), 1);
    });

    it('concurrent sessions on distinct keys both commit, each with its own ID', async (t) => {
      const ds = started(t);
      if (!ds) return;
      const store = await open(ds);
      const keys = [keyOf('concurrent-a'), keyOf('concurrent-b')] as const;
      const sessions = keys.map(() => store.session());
      await Promise.all(sessions.map((session, i) => session.begin(keyBytes(keys[i]))));
      const changes = keys.map((key) => ds.changes(key));
      // Interleaved, as two workers sending changes at the same time.
      for (let step = 0; step < Math.max(...changes.map((list) => list.length)); step++) {
        await Promise.all(
          sessions.map(async (session, i) => {
            const change = changes[i]?.[step];
            if (change !== undefined) await session.apply(change);
          }),
        );
      }
      const ids = await Promise.all(sessions.map((session, i) => session.commit(keyBytes(keys[i]))));
      assert.deepEqual(
        ids.map(toHex),
        changes.map((list) => toHex(storeId(list))),
      );
      for (const key of keys) assert.equal(await ds.applied(key), 1);
    });
  });
}

/**
 * The committable helper: the easy way to write a committable. A store type supplies a
 * `StoreDriver` (how to apply, prepare and commit with a marker in its own datastore); the
 * helper keeps the writable/skip state, hashes every applied change, and turns markers
 * into exactly-once commits and skips on recovery.
 * @module
 */
import type { Committable } from '../core/committable.ts';
import { AlreadyCommittedError, NotWritableError } from '../errors/core.ts';
import { describeKey, sameKey } from '../core/keys.ts';
import { ChangeHasher, canonicalLine } from '../core/session-id.ts';
import { atChange, isConnectionLost, MarkerConflictError, MarkerExistsError, SessionSpoiledError, StoreUnavailableError } from './errors.ts';

export { ChangeRejectedError, MarkerConflictError, MarkerExistsError, StoreUnavailableError } from './errors.ts';

/** What one store type implements for one session; the helper drives it. */
export interface StoreDriver<Change> {
  /** The ID committed under `key` if this store holds its marker. */
  findMarker(key: Uint8Array): Promise<Uint8Array | undefined>;
  /** A session starts (fresh, or a recovery without a marker): get ready for changes. */
  open(key: Uint8Array): Promise<void>;
  /** Validates and applies (or buffers) one change; throws `ChangeRejectedError` to refuse it. */
  apply(change: Change): Promise<void>;
  /**
   * Makes the changes ready to commit, failing now if they cannot commit. Optional: a
   * driver without it does everything in `commit`. May throw `MarkerExistsError`.
   */
  prepare?(key: Uint8Array, id: Uint8Array): Promise<void>;
  /**
   * After `prepare`: the session will commit; release what other sessions wait for.
   * Optional (see {@link StoreSession.decide}).
   */
  decide?(key: Uint8Array, id: Uint8Array): Promise<void>;
  /** Commits the data together with the marker `(key, id)`; throws `MarkerExistsError` if it is there. */
  commit(key: Uint8Array, id: Uint8Array): Promise<void>;
  /**
   * Optional: `findMarker`, then, without a marker, `open`, every change of `changes` (a
   * refused one named by its index, `atChange`) and `prepare` with `id`, in one step — for
   * a session whose changes are all known when it begins (a one-shot). Returns the stored ID
   * when the marker is there, and then nothing is open. May throw `MarkerExistsError` as
   * `prepare` does; after another error the session is open until `rollback`.
   */
  openAndPrepare?(key: Uint8Array, changes: readonly Change[], id: Uint8Array): Promise<Uint8Array | undefined>;
  /** Discards everything since `open`. Safe in any state, called at most once per session. */
  rollback(): Promise<void>;
  /**
   * Optional, with `rollbackToSavepoint` and `releaseSavepoint`: one request's changes
   * start. `rollbackToSavepoint` then discards every change applied since (and clears a
   * failure they caused: the session goes on), `releaseSavepoint` keeps them. PostgreSQL:
   * `SAVEPOINT`; a buffering driver remembers how much it holds. A driver without them but
   * with `reopen` is undone by reopening and re-applying the changes before the request;
   * a driver with neither cannot undo, and a failed request ends its session.
   */
  savepoint?(): Promise<void>;
  rollbackToSavepoint?(): Promise<void>;
  releaseSavepoint?(): Promise<void>;
  /**
   * Optional: opens the session again, as `open` did, after its connection was lost (the
   * driver threw a `StoreUnavailableError` with `connectionLost`) — what the connection held
   * is gone. The helper then re-applies every change the session took, in order. Only
   * before `prepare` succeeded: past it the commit point may be written.
   */
  reopen?(key: Uint8Array): Promise<void>;
  /**
   * True when `prepare` and `openAndPrepare` queue for their lock in the order they are
   * called, before their first `await` (see {@link StoreSession.queuesInCallOrder}).
   */
  readonly queuesInCallOrder?: boolean;
}

type Mode = 'idle' | 'writable' | 'prepared' | 'skip';

/**
 * A Committable over a StoreDriver, plus `apply` and `prepare`.
 *
 * On `beginRecovery`, a store that already holds the marker for the key enters skip mode:
 * applies are ignored and `commit` returns the stored ID. `begin` with a key the store
 * already committed fails with `AlreadyCommittedError`.
 */
export class HelperCommittable<Change> implements Committable {
  readonly name: string;
  readonly #driver: StoreDriver<Change>;
  #mode: Mode = 'idle';
  /** Created when the store opens for writing: a skipped or idle session hashes nothing. */
  #hasher: ChangeHasher | undefined;
  #storedId: Uint8Array | undefined;
  /** This session's store ID, fixed at prepare: no change comes after it. */
  #preparedId: Uint8Array | undefined;
  #opened = false;
  /** The key the session opened under: a lost connection reopens under it. */
  #key: Uint8Array | undefined;
  /** Every change the driver holds for this session, in order: re-applied after a reopen. */
  #taken: Change[] = [];
  /** The driver's connection was lost: reopen and re-apply before the next step. */
  #lost = false;

  /**
   * `begin`, the changes and `prepare` in one driver step (see
   * {@link StoreSession.beginAndPrepare}): present when the driver has `openAndPrepare`.
   */
  readonly beginAndPrepare?: (key: Uint8Array, changes: readonly Change[]) => Promise<void>;
  /** The driver's: `prepare` and `beginAndPrepare` reach it before their first `await`. */
  readonly queuesInCallOrder: boolean;

  constructor(name: string, driver: StoreDriver<Change>) {
    this.name = name;
    this.#driver = driver;
    this.queuesInCallOrder = driver.queuesInCallOrder ?? false;
    const { openAndPrepare } = driver;
    if (openAndPrepare) this.beginAndPrepare = (key, changes) => this.#beginAndPrepare(key, changes, openAndPrepare.bind(driver));
  }

  /** True when recovery found this store already committed: applies are ignored. */
  get skipping(): boolean {
    return this.#mode === 'skip';
  }

  /** How many changes were applied in this session (skipped ones not counted). */
  get applied(): number {
    return this.#hasher?.count ?? 0;
  }

  async begin(key: Uint8Array): Promise<void> {
    this.#reset();
    if (await this.#driver.findMarker(key)) throw new AlreadyCommittedError(describeKey(key), this.name);
    await this.#open(key);
  }

  async beginRecovery(key: Uint8Array): Promise<void> {
    this.#reset();
    const stored = await this.#driver.findMarker(key);
    if (stored) {
      this.#storedId = stored;
      this.#mode = 'skip';
      return;
    }
    await this.#open(key);
  }

  /** Applies one change; hashed in order once the driver took it (a refused change is not counted). Ignored in skip mode. */
  async apply(change: Change): Promise<void> {
    if (this.#mode === 'skip') return;
    if (this.#mode !== 'writable') throw new NotWritableError(`${this.name} is not writable (${this.#mode})`);
    const hasher = this.#hashed();
    if (this.#lost) await this.#heal();
    try {
      await this.#driver.apply(change);
    } catch (err) {
      if (isConnectionLost(err)) this.#lost = true;
      throw err;
    }
    hasher.add(change);
    this.#taken.push(change);
  }

  /**
   * Applies the changes of one request, all or nothing: when it throws, the session is as
   * it was before the call (and goes on), unless it throws {@link SessionSpoiledError}. A
   * rejected change is named by its index in `changes`. A connection lost before or during
   * the request is reopened and the session's earlier changes re-applied (drivers with
   * `reopen`), then the request is tried once more; ignored in skip mode.
   */
  async applyAll(changes: readonly Change[]): Promise<void> {
    if (this.#mode === 'skip') return;
    if (this.#mode !== 'writable') throw new NotWritableError(`${this.name} is not writable (${this.#mode})`);
    const hasher = this.#hashed();
    const lines = changes.map((change) => canonicalLine(change));
    for (let attempt = 1; ; attempt += 1) {
      if (this.#lost) await this.#heal();
      try {
        await this.#applyRequest(changes);
        break;
      } catch (err) {
        // Lost while the request ran: nothing of it stayed; heal and run it once more.
        if (!isConnectionLost(err) || !this.#lost || attempt >= 2) throw err;
      }
    }
    for (const line of lines) hasher.addLine(line);
    for (const change of changes) this.#taken.push(change);
  }

  /** Makes the session's changes ready to commit; fails now if they cannot. */
  async prepare(key: Uint8Array): Promise<void> {
    if (this.#mode === 'skip' || this.#mode === 'prepared') return;
    if (this.#mode !== 'writable') throw new NotWritableError(`${this.name} cannot prepare (${this.#mode})`);
    const id = this.#hashed().digest();
    let skipped = false;
    for (let attempt = 1; ; attempt += 1) {
      if (this.#lost) await this.#heal();
      try {
        skipped = await this.#guardMarker(key, id, () => this.#driver.prepare?.(key, id));
        break;
      } catch (err) {
        // Before the commit point, and the driver says nothing of the session survived: again, once.
        if (!isConnectionLost(err) || !this.#driver.reopen || attempt >= 2) throw err;
        this.#lost = true;
      }
    }
    if (skipped) return;
    this.#preparedId = id;
    this.#mode = 'prepared';
  }

  /** See {@link StoreSession.decide}. Nothing to do in skip mode. */
  async decide(key: Uint8Array): Promise<void> {
    if (this.#mode === 'writable') await this.prepare(key);
    if (this.#mode !== 'prepared') return;
    await this.#driver.decide?.(key, this.#preparedId as Uint8Array);
  }

  async commit(key: Uint8Array): Promise<Uint8Array> {
    if (this.#mode === 'writable') await this.prepare(key);
    if (this.#mode === 'skip') return this.#finish(this.#storedId as Uint8Array);
    if (this.#mode !== 'prepared') throw new NotWritableError(`${this.name} cannot commit (${this.#mode})`);
    const id = this.#preparedId as Uint8Array;
    const skipped = await this.#guardMarker(key, id, () => this.#driver.commit(key, id));
    return this.#finish(skipped ? (this.#storedId as Uint8Array) : id);
  }

  async cancel(): Promise<void> {
    const opened = this.#opened;
    this.#reset();
    if (opened) await this.#driver.rollback();
  }

  async #beginAndPrepare(
    key: Uint8Array,
    changes: readonly Change[],
    openAndPrepare: (key: Uint8Array, changes: readonly Change[], id: Uint8Array) => Promise<Uint8Array | undefined>,
  ): Promise<void> {
    this.#reset();
    const hasher = new ChangeHasher();
    for (const change of changes) hasher.add(change);
    const id = hasher.digest();
    // Open for the driver's step: a failure in it leaves the session for `cancel` to roll back.
    this.#opened = true;
    this.#key = key;
    this.#hasher = hasher;
    this.#mode = 'writable';
    let stored: Uint8Array | undefined;
    const skipped = await this.#guardMarker(key, id, async () => {
      stored = await openAndPrepare(key, changes, id);
    });
    if (stored) {
      this.#reset();
      throw new AlreadyCommittedError(describeKey(key), this.name);
    }
    if (skipped) return;
    this.#taken = [...changes];
    this.#preparedId = id;
    this.#mode = 'prepared';
  }

  async #open(key: Uint8Array): Promise<void> {
    this.#opened = true;
    this.#key = key;
    this.#hasher = new ChangeHasher();
    await this.#driver.open(key);
    this.#mode = 'writable';
  }

  /** Runs one request's changes on the driver; on failure leaves the session as before them, or throws SessionSpoiledError. */
  async #applyRequest(changes: readonly Change[]): Promise<void> {
    const driver = this.#driver;
    const undoable = driver.savepoint && driver.rollbackToSavepoint && driver.releaseSavepoint;
    if (undoable) await this.#lossAware(() => driver.savepoint?.());
    try {
      for (const [index, change] of changes.entries()) {
        try {
          await driver.apply(change);
        } catch (err) {
          throw atChange(err, index);
        }
      }
    } catch (err) {
      if (isConnectionLost(err)) {
        this.#lost = true;
        if (driver.reopen) throw err;
      }
      if (undoable && !this.#lost) await this.#undo(() => driver.rollbackToSavepoint?.(), err);
      else if (driver.reopen) {
        this.#lost = true;
        await this.#heal().catch((healErr: unknown) => {
          if (healErr instanceof SessionSpoiledError) throw new SessionSpoiledError(this.name, err);
        });
      } else throw new SessionSpoiledError(this.name, err);
      throw err;
    }
    if (undoable) await this.#lossAware(() => driver.releaseSavepoint?.());
  }

  /** Undoes a failed request with `step`; a failing undo spoils the session (unless the connection went: a reopen heals it). */
  async #undo(step: () => Promise<void> | undefined, cause: unknown): Promise<void> {
    try {
      await step();
    } catch (err) {
      if (isConnectionLost(err) && this.#driver.reopen) {
        this.#lost = true;
        return;
      }
      throw new SessionSpoiledError(this.name, cause);
    }
  }

  /** Runs a driver step; a lost connection marks the session for healing. */
  async #lossAware(step: () => Promise<void> | undefined): Promise<void> {
    try {
      await step();
    } catch (err) {
      if (isConnectionLost(err)) this.#lost = true;
      throw err;
    }
  }

  /**
   * The session's connection was lost: reopens it and re-applies every change taken, in
   * order. While the store stays out of reach it throws that (`503`) and stays lost, so
   * the next step tries again; a re-applied change the store now refuses spoils the session.
   */
  async #heal(): Promise<void> {
    const driver = this.#driver;
    if (!driver.reopen || !this.#key) throw new SessionSpoiledError(this.name, new StoreUnavailableError(`${this.name} lost the session's connection`));
    try {
      await driver.reopen(this.#key);
      for (const change of this.#taken) await driver.apply(change);
    } catch (err) {
      if (err instanceof StoreUnavailableError) throw err;
      throw new SessionSpoiledError(this.name, err);
    }
    this.#lost = false;
  }

  /**
   * Runs a driver step; a marker with our own ID means another committer already won with
   * the same changes: roll back and skip (returns true).
   */
  async #guardMarker(key: Uint8Array, id: Uint8Array, step: () => Promise<void> | undefined): Promise<boolean> {
    try {
      await step();
      return false;
    } catch (err) {
      if (!(err instanceof MarkerExistsError)) throw err;
      if (!sameKey(err.storedId, id)) throw new MarkerConflictError(this.name, key, err.storedId, id);
      await this.#driver.rollback();
      this.#opened = false;
      this.#storedId = err.storedId;
      this.#mode = 'skip';
      return true;
    }
  }

  /** The hasher of a session open for writing (writable or prepared). */
  #hashed(): ChangeHasher {
    if (!this.#hasher) throw new NotWritableError(`${this.name} is not open for writing (${this.#mode})`);
    return this.#hasher;
  }

  #finish(id: Uint8Array): Uint8Array {
    this.#opened = false;
    this.#mode = 'idle';
    return id;
  }

  #reset(): void {
    this.#taken = [];
    this.#lost = false;
    this.#key = undefined;
    this.#mode = 'idle';
    this.#hasher = undefined;
    this.#storedId = undefined;
    this.#preparedId = undefined;
    this.#opened = false;
  }
}

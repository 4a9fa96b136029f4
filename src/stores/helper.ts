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
import { ChangeHasher } from '../core/session-id.ts';
import { MarkerConflictError, MarkerExistsError } from './errors.ts';

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
  /** Discards everything since `open`. Safe in any state, called at most once per session. */
  rollback(): Promise<void>;
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

  constructor(name: string, driver: StoreDriver<Change>) {
    this.name = name;
    this.#driver = driver;
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
    await this.#driver.apply(change);
    hasher.add(change);
  }

  /** Makes the session's changes ready to commit; fails now if they cannot. */
  async prepare(key: Uint8Array): Promise<void> {
    if (this.#mode === 'skip' || this.#mode === 'prepared') return;
    if (this.#mode !== 'writable') throw new NotWritableError(`${this.name} cannot prepare (${this.#mode})`);
    const id = this.#hashed().digest();
    const skipped = await this.#guardMarker(key, id, () => this.#driver.prepare?.(key, id));
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

  async #open(key: Uint8Array): Promise<void> {
    this.#opened = true;
    this.#hasher = new ChangeHasher();
    await this.#driver.open(key);
    this.#mode = 'writable';
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
    this.#mode = 'idle';
    this.#hasher = undefined;
    this.#storedId = undefined;
    this.#preparedId = undefined;
    this.#opened = false;
  }
}

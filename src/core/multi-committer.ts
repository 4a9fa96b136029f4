/**
 * MultiCommitter: drives several committables through one session, keeping the session's
 * key durably in a slot before any of them begins. Port of the reference Go package.
 * @module
 */
import { silentLogger, type Committable, type CommitterLogger } from './committable.ts';
import { AlreadyRegisteredError, IdempotencyKeyMismatchError, InSessionError, NotInSessionError } from '../errors/core.ts';
import { describeKey, keyBytes, sameKey, type IdempotencyKey } from './keys.ts';
import type { Kv } from '../kv/kv.ts';
import { sessionId } from './session-id.ts';
import { KvSlot, isSlot, type CommitResult, type SessionSlot } from './slot.ts';

/** Options of a MultiCommitter. */
export interface MultiCommitterOptions {
  /** KV key of the slot when the committer is given a KV. Default `slot`. */
  readonly slotKey?: string;
  /** Where cancel errors go: they never replace the error that caused the cancel. */
  readonly logger?: CommitterLogger;
}

type State = 'closed' | 'beginning' | 'open' | 'committing';

/**
 * Combines committables into one session. It is not a Committable itself.
 *
 * - `begin(key)`: a key already in the slot means a crash interrupted a session: the same
 *   key recovers (`beginRecovery` on every committable), another key fails with
 *   `IdempotencyKeyMismatchError`. An empty slot is written durably first, then every
 *   committable begins.
 * - `commit(key)`: commits every committable in ascending name order, derives the session
 *   ID from their IDs, empties the slot and returns the ID.
 * - Any error inside `begin` or `commit` cancels every committable and closes the session;
 *   the slot keeps the key so that the next `begin` with it recovers.
 */
export class MultiCommitter<Receipt = void> {
  readonly #slot: SessionSlot<Receipt>;
  readonly #logger: CommitterLogger;
  readonly #committables = new Map<string, Committable>();
  #state: State = 'closed';
  #key: Uint8Array | undefined;
  #recovery = false;

  /**
   * @param slot where the key of the open session is kept: a KV (the slot is then its key
   *   `options.slotKey`) or a slot of the caller's, such as the coordinator's session record
   * @param committables initial committables by name
   */
  constructor(
    slot: Kv | SessionSlot<Receipt>,
    committables: Iterable<readonly [string, Committable]> | Record<string, Committable> = [],
    options: MultiCommitterOptions = {},
  ) {
    // A KV slot gives nothing back on release: its Receipt is void.
    this.#slot = isSlot(slot) ? slot : (new KvSlot(slot, options.slotKey ?? 'slot') as unknown as SessionSlot<Receipt>);
    this.#logger = options.logger ?? silentLogger;
    const entries = Symbol.iterator in committables ? committables : Object.entries(committables);
    for (const [name, committable] of entries as Iterable<readonly [string, Committable]>) this.register(name, committable);
  }

  /** Adds a committable under a unique name; not while a session is open. */
  register(name: string, committable: Committable): void {
    if (this.#state !== 'closed') throw new InSessionError('cannot register a committable while a session is open');
    if (this.#committables.has(name)) throw new AlreadyRegisteredError(name);
    this.#committables.set(name, committable);
  }

  /** Names of the committables in commit order (ascending). */
  get names(): string[] {
    return [...this.#committables.keys()].sort(compareNames);
  }

  /** True while a session is open (between a successful begin and its commit or cancel). */
  get inSession(): boolean {
    return this.#state !== 'closed';
  }

  /** True when the open session resumed a crashed one (`beginRecovery`). */
  get recovering(): boolean {
    return this.#recovery;
  }

  /** Begins (or, after a crash, recovers) the session under `key`. */
  async begin(idempotencyKey: IdempotencyKey): Promise<{ recovery: boolean }> {
    if (this.#state !== 'closed') throw new InSessionError();
    this.#state = 'beginning';
    const key = keyBytes(idempotencyKey);
    try {
      const held = await this.#slot.read();
      if (held && !sameKey(held, key)) {
        throw new IdempotencyKeyMismatchError(describeKey(held), describeKey(key), 'on begin: the slot holds another session');
      }
      this.#recovery = held !== undefined;
      if (!held) await this.#slot.claim(key);
      for (const committable of this.#ordered()) {
        await (this.#recovery ? committable.beginRecovery(key) : committable.begin(key));
      }
      this.#key = key;
      this.#state = 'open';
      return { recovery: this.#recovery };
    } catch (err) {
      await this.#cancelAll(err);
      throw err;
    }
  }

  /** Commits the open session under `key` and returns its session ID. */
  async commit(idempotencyKey: IdempotencyKey): Promise<Uint8Array> {
    return (await this.commitWithDetails(idempotencyKey)).sessionId;
  }

  /** Like `commit`, and also returns each committable's ID and what the slot gave back on release. */
  async commitWithDetails(idempotencyKey: IdempotencyKey): Promise<CommitResult & { readonly receipt: Receipt }> {
    if (this.#state !== 'open' || !this.#key) throw new NotInSessionError(`no session is open to commit (state: ${this.#state})`);
    const key = keyBytes(idempotencyKey);
    if (!sameKey(this.#key, key)) {
      throw new IdempotencyKeyMismatchError(describeKey(this.#key), describeKey(key), 'on commit');
    }
    this.#state = 'committing';
    try {
      const stores = new Map<string, Uint8Array>();
      for (const [name, committable] of this.#orderedEntries()) stores.set(name, await committable.commit(key));
      const result: CommitResult = { sessionId: sessionId(stores), stores };
      const receipt = await this.#slot.release(key, result);
      this.#close();
      return { ...result, receipt };
    } catch (err) {
      await this.#cancelAll(err);
      throw err;
    }
  }

  /**
   * Cancels the open session: every committable returns to its state before begin and the
   * slot is emptied, so the key may begin afresh. Not for a session past its commit point:
   * that is the caller's rule to keep.
   */
  async cancel(): Promise<void> {
    if (this.#state !== 'open' || !this.#key) throw new NotInSessionError(`no session is open to cancel (state: ${this.#state})`);
    const key = this.#key;
    this.#state = 'committing';
    let firstError: unknown;
    for (const committable of this.#ordered()) {
      try {
        await committable.cancel();
      } catch (err) {
        firstError ??= err;
        this.#logger.error({ err, key: describeKey(key) }, 'cancel failed');
      }
    }
    try {
      if (firstError === undefined) await this.#slot.abandon(key);
    } finally {
      this.#close();
    }
    if (firstError !== undefined) throw firstError;
  }

  /**
   * What an error inside `begin` or `commit` does, for a caller that decides a session
   * must stop where it is: every committable is cancelled, the session closes, and the
   * slot keeps the key so that the next `begin` with it recovers.
   */
  async abort(cause: unknown): Promise<void> {
    if (this.#state === 'closed') return;
    await this.#cancelAll(cause);
  }

  async #cancelAll(cause: unknown): Promise<void> {
    for (const [name, committable] of this.#orderedEntries()) {
      try {
        await committable.cancel();
      } catch (err) {
        this.#logger.error({ err, cause, committable: name }, 'cancel after a failed session step failed');
      }
    }
    this.#close();
  }

  #close(): void {
    this.#state = 'closed';
    this.#key = undefined;
  }

  #orderedEntries(): [string, Committable][] {
    return this.names.map((name) => [name, this.#committables.get(name) as Committable]);
  }

  #ordered(): Committable[] {
    return this.#orderedEntries().map(([, committable]) => committable);
  }
}

/** Ascending by UTF-16 code units: the order of commits and of session-ID hashing. */
export function compareNames(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

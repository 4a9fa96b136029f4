/**
 * One session under one key, as a state machine: `active` (begun, taking changes) → the
 * commit point → `committing` → ended. Its stores' committables are driven by a
 * MultiCommitter whose slot is the session record. Every way a session can end goes
 * through one path, {@link Session.#end}, which decides from where the session is what
 * an interruption leaves behind — as the reference package's single deferred handler does:
 * - before the commit point: cancel the stores, delete the record; a retry starts afresh;
 * - at or after it: release the stores, keep the record, and have recovery finish it.
 * @module
 */
import type { Logger } from 'pino';
import type { Committable } from '../core/committable.ts';
import { keyBytes } from '../core/keys.ts';
import { MultiCommitter, compareNames } from '../core/multi-committer.ts';
import { SessionHasher } from '../core/session-id.ts';
import { errorMessage } from '../errors/catalogue.ts';
import type { StoreSession } from '../stores/api.ts';
import { AlreadyCommittedError } from '../errors/core.ts';
import { atChange, SessionSpoiledError } from '../stores/errors.ts';
import { PayloadTooLargeError, ServiceUnavailableError, storeError } from './errors.ts';
import type { Failpoints } from './failpoints.ts';
import type { LogBudget } from './log-budget.ts';
import { RecordSlot, SlotTakenError, type RecordDeps } from './record-slot.ts';
import type { ChangeLog, ResultRecord, SessionRecord } from './records.ts';

/** What every session of one coordinator shares. */
export interface SessionDeps extends RecordDeps {
  readonly logger: Logger;
  /** Largest change log one session may collect, in bytes of canonical JSON. */
  readonly maxLogBytes: number;
  /** What all sessions' change logs may hold together. */
  readonly logBudget: LogBudget;
  /**
   * Ask every store that queues in call order (`StoreSession.queuesInCallOrder`: sqlite)
   * to prepare at once, instead of one after the other: each holds its lock for less time.
   * Only where no other process takes those stores' locks in another order: the embedded
   * KV, one instance (see {@link Session.#prepareAll}).
   */
  readonly prepareTogether?: boolean;
}

/**
 * How a session ended, as its owner needs to know: `committed`; `cancelled` before its
 * commit point (its stores were begun); `recover`: stopped at or past its commit point,
 * recovery must finish it; `released`: stopped without anything left to do here (its begin
 * failed, or its record is no longer this session's to decide).
 */
export interface SessionEnd {
  readonly outcome: 'committed' | 'cancelled' | 'recover' | 'released';
  /** Why: `committed`, or a cancel reason (`request`, `idle`, `shutdown`, `error`, `lease lost`). */
  readonly reason: string;
}

/** Where a session starts from. */
export interface SessionStart {
  readonly key: string;
  readonly stores: ReadonlyMap<string, StoreSession>;
  readonly oneShot: boolean;
  /** A one-shot session's changes, already hashed: the session ID they define is known. */
  readonly hasher?: SessionHasher;
  /** The record of a crashed session this one resumes (adopted by this instance). */
  readonly adopted?: { readonly record: SessionRecord; readonly revision: number };
  /** The attempt of the key the stores' sessions were opened with. */
  readonly attempt: string;
  /** Names of the stores that are participants (see \`Store.cancelAttempt\`). */
  readonly participants: readonly string[];
  /** Bytes already taken from the log budget for this session (a one-shot's changes); given back when it ends. */
  readonly heldBytes?: number;
  /** Called once, when the session ends in any way. */
  readonly onEnd: (session: Session, end: SessionEnd) => void;
}

/** Where a session is. `deciding`: the commit point is being written; whether it landed is unknown until it answers. */
export type SessionPhase = 'active' | 'deciding' | 'committing' | 'ended';

/** The session has ended (or ended while a request waited for its turn). */
export class SessionEndedError extends Error {
  constructor(key: string) {
    super(`session ${key} has ended`);
  }
}

/**
 * A session stopped at or past its commit point: it will commit, through recovery. A
 * passing condition for the request (`503`); `cause` is what interrupted it.
 */
export class SessionInterruptedError extends ServiceUnavailableError {
  constructor(key: string, atCommitPoint: boolean, cause: unknown) {
    super(
      atCommitPoint
        ? `commit of ${key} was interrupted (${errorMessage(cause)}); retry it`
        : `commit of ${key} is past its commit point and will complete (${errorMessage(cause)}); retry for the result`,
      1,
      { cause },
    );
  }
}

/**
 * One store as the MultiCommitter sees it: names the store in its errors, fires
 * `commit.afterStore.N` after the N-th store (in commit order) committed, and turns the
 * committer's cancel into a release once the session may have passed its commit point
 * (a participant must never hear `cancel` for a session that will commit).
 */
class StoreStep implements Committable {
  constructor(
    readonly name: string,
    readonly inner: StoreSession,
    readonly point: string,
    readonly failpoints: Failpoints,
    readonly mayHaveCommitted: () => boolean,
    /** Prepared with the session's other such stores in one step (see `Session.#prepareAll`). */
    readonly together: boolean,
  ) {}

  /** A one-shot's changes for this store, when known at begin (see {@link begin}). */
  changes: readonly unknown[] | undefined;
  /** True once `begin` took `changes` and prepared: the store is done until the commit point. */
  prepared = false;
  /** What this store's changes or prepare failed with inside `begin`: its prepare in `Session.commit` throws it. */
  failed: unknown;

  /** A one-shot's begin and prepare wait for the session's other such stores: `Session.#beginTogether`. */
  get deferred(): boolean {
    return this.together && this.changes !== undefined && this.inner.beginAndPrepare !== undefined;
  }

  /** Begins the store, or, with `changes` and `beginAndPrepare`, prepares it too (below); a deferred step waits. */
  async begin(key: Uint8Array): Promise<void> {
    if (this.deferred) return;
    if (!this.changes || !this.inner.beginAndPrepare) {
      await this.inner.begin(key).catch((err: unknown) => Promise.reject(storeError(this.name, err)));
      return;
    }
    await this.beginAndPrepare(key);
  }

  /**
   * Begins, applies `changes` and prepares in one step. Only a key the store already
   * committed fails here; any other failure waits for this store's turn to prepare, so the
   * stores before it prepare as they did (a participant hears its try, then the cancel)
   * and the session is cancelled as before. Reaches the store before its first `await`.
   */
  async beginAndPrepare(key: Uint8Array): Promise<void> {
    try {
      await (this.inner.beginAndPrepare as NonNullable<StoreSession['beginAndPrepare']>)(key, this.changes ?? []);
      this.prepared = true;
    } catch (err) {
      if (err instanceof AlreadyCommittedError) throw storeError(this.name, err);
      this.failed = err;
    }
  }

  /** Prepares the store, or fails with what its `beginAndPrepare` failed with. Reaches the store before its first `await`. */
  prepare(key: Uint8Array): Promise<void> {
    return this.failed === undefined ? this.inner.prepare(key) : Promise.reject(this.failed);
  }

  async beginRecovery(key: Uint8Array): Promise<void> {
    await this.inner.beginRecovery(key).catch((err: unknown) => Promise.reject(storeError(this.name, err)));
  }

  async commit(key: Uint8Array): Promise<Uint8Array> {
    const id = await this.inner.commit(key).catch((err: unknown) => Promise.reject(storeError(this.name, err)));
    await this.failpoints.fire(this.point);
    return id;
  }

  async cancel(): Promise<void> {
    const stop = this.mayHaveCommitted() && this.inner.release ? this.inner.release() : this.inner.cancel();
    await stop.catch((err: unknown) => Promise.reject(storeError(this.name, err)));
  }
}

/** A session this instance drives. Requests take turns through `run`. */
export class Session {
  readonly key: string;
  readonly oneShot: boolean;
  /** Store names in commit order. */
  readonly storeNames: readonly string[];
  readonly startedAt: string;
  /** Settles when the session has ended, however it ended. */
  readonly ended: Promise<void>;
  readonly #deps: SessionDeps;
  readonly #stores: ReadonlyMap<string, StoreSession>;
  readonly #keyBytes: Uint8Array;
  readonly #slot: RecordSlot;
  readonly #committer: MultiCommitter<ResultRecord>;
  readonly #steps: ReadonlyMap<string, StoreStep>;
  readonly #hasher: SessionHasher;
  readonly #recordedSessionId: string | undefined;
  readonly #log: ChangeLog = {};
  readonly #onEnd: (session: Session, end: SessionEnd) => void;
  #markEnded: () => void = () => undefined;
  #phase: SessionPhase;
  /** The result once every store committed, while (and after) it is written to the KV. */
  #committed: ResultRecord | undefined;
  /** From the moment the commit point is written (or its write is attempted) on. */
  #mayHaveCommitted: boolean;
  #logBytes = 0;
  /** Taken from the log budget, given back once when the session ends. */
  #heldBytes: number;
  #lastTouched = Date.now();
  #queue: Promise<unknown> = Promise.resolve();
  #logger: Logger | undefined;

  constructor(deps: SessionDeps, start: SessionStart) {
    this.#deps = deps;
    this.key = start.key;
    this.#keyBytes = keyBytes(start.key);
    this.oneShot = start.oneShot;
    this.#stores = start.stores;
    this.storeNames = [...start.stores.keys()].sort(compareNames);
    this.#hasher = start.hasher ?? new SessionHasher(this.storeNames);
    this.#recordedSessionId = start.adopted?.record.state === 'committing' ? start.adopted.record.sessionId : undefined;
    this.#onEnd = start.onEnd;
    this.#heldBytes = start.heldBytes ?? 0;
    this.startedAt = start.adopted?.record.startedAt ?? new Date().toISOString();
    this.#phase = start.adopted?.record.state === 'committing' ? 'committing' : 'active';
    this.#mayHaveCommitted = this.#phase === 'committing';
    this.ended = new Promise((resolve) => {
      this.#markEnded = resolve;
    });
    this.#slot = new RecordSlot(deps, {
      key: start.key,
      stores: this.storeNames,
      oneShot: start.oneShot,
      startedAt: this.startedAt,
      adopted: start.adopted,
      attempt: start.attempt,
      participants: start.participants,
      sessionId: start.oneShot && start.hasher ? this.#hasher.sessionIdHex() : undefined,
    });
    const committables = this.storeNames.map((name, i) => {
      const store = start.stores.get(name) as StoreSession;
      const together = deps.prepareTogether === true && store.queuesInCallOrder === true;
      return [name, new StoreStep(name, store, `commit.afterStore.${i + 1}`, deps.failpoints, () => this.#mayHaveCommitted, together)] as const;
    });
    this.#steps = new Map(committables);
    const logger = { warn: (obj: object, msg: string) => this.logger.warn(obj, msg), error: (obj: object, msg: string) => this.logger.error(obj, msg) };
    this.#committer = new MultiCommitter(this.#slot, committables, { logger });
  }

  /** The session's child logger (bound to its key), made when first used: most sessions log nothing. */
  get logger(): Logger {
    this.#logger ??= this.#deps.logger.child({ key: this.key });
    return this.#logger;
  }

  /** `active` until the commit point is written, then `committing` (as clients see it). */
  get state(): 'active' | 'committing' {
    return this.#phase === 'active' ? 'active' : 'committing';
  }

  /**
   * The session's result once every store committed: the answer to any retry, already
   * before the result record has landed in the KV (the session stays in its table until then).
   */
  get committedResult(): ResultRecord | undefined {
    return this.#committed;
  }

  /** True until the session has ended: committed, cancelled, or handed to recovery. */
  get open(): boolean {
    return this.#phase !== 'ended';
  }

  /** True while changes may still come (interactive, before the commit point). */
  get acceptsChanges(): boolean {
    return this.#phase === 'active' && !this.oneShot;
  }

  /** Milliseconds since the last request touched this session. */
  idleFor(now = Date.now()): number {
    return now - this.#lastTouched;
  }

  /** The revision of the record this session last wrote or adopted (0 before the first write). */
  get revision(): number {
    return this.#slot.revision;
  }

  /** True once a change was applied to any store (every change adds at least two bytes of JSON to the log). */
  get hasChanges(): boolean {
    return this.#logBytes > 0;
  }

  /**
   * The session ID its changes define: as recorded at the commit point for a roll-forward,
   * else of the changes so far (every store counted, with or without changes).
   */
  get sessionId(): string {
    return this.#recordedSessionId ?? this.#hasher.sessionIdHex();
  }

  /** Runs `step` after every earlier step of this session: one request at a time. */
  run<T>(step: () => Promise<T>): Promise<T> {
    const next = this.#queue.then(step, step);
    this.#queue = next.catch(() => undefined);
    return next;
  }

  /**
   * Steps 1–2: writes the record (interactive) and begins every store; an adopted record
   * makes the stores recover instead. A failure ends the session before its commit point.
   * A one-shot passes its changes (`applyAll` still follows): a store that can takes them
   * with its begin and prepares, in one step — the stores prepared together all at once,
   * once every store has begun.
   */
  async begin(oneShotChanges?: Readonly<Record<string, readonly unknown[]>>): Promise<void> {
    if (oneShotChanges) for (const [name, step] of this.#steps) step.changes = oneShotChanges[name] ?? [];
    try {
      const { recovery } = await this.#committer.begin(this.key);
      if (!recovery) await this.#beginTogether();
    } catch (err) {
      return this.#fail(err);
    }
  }

  /**
   * A one-shot's deferred stores (see {@link #prepareAll}) begin and prepare, all asked in
   * one synchronous step. A key one of them already committed ends the session as a
   * failed begin would: every store cancelled, the record left to `#fail`.
   */
  async #beginTogether(): Promise<void> {
    const deferred = [...this.#steps.values()].filter((step) => step.deferred);
    if (deferred.length === 0) return;
    const results = await Promise.allSettled(deferred.map((step) => step.beginAndPrepare(this.#keyBytes)));
    const refused = results.find((result) => result.status === 'rejected');
    if (!refused) return;
    await this.#committer.abort(refused.reason);
    throw refused.reason;
  }

  /**
   * Step 3: hands one request's changes to one store, all or nothing, then logs and hashes
   * them. `lines` are the changes' canonical lines, already checked against the store type.
   * A change the store refuses fails the request and leaves the session as it was before
   * it — store, log and hash (DESIGN step 3) — so the session goes on; only a store that
   * cannot undo the request (no `applyAll`, or `SessionSpoiledError`) ends the session.
   */
  async apply(store: string, changes: readonly unknown[], lines: readonly string[]): Promise<void> {
    if (!this.acceptsChanges) throw new SessionEndedError(this.key);
    let bytes = 0;
    for (const line of lines) bytes += line.length - 1;
    if (this.#logBytes + bytes > this.#deps.maxLogBytes) {
      throw new PayloadTooLargeError(`session ${this.key} would exceed the change log limit of ${this.#deps.maxLogBytes} bytes`);
    }
    // Taken before the first await: concurrent sessions cannot both pass the check.
    this.#deps.logBudget.reserve(bytes, `a change to session ${this.key}`);
    this.#heldBytes += bytes;
    this.#lastTouched = Date.now();
    const target = this.#stores.get(store) as StoreSession;
    try {
      if (!target.applyAll) {
        await this.#stage(store, changes);
      } else {
        await target.applyAll(changes);
        this.#log[store] ??= [];
        const logged = this.#log[store];
        for (const change of changes) logged.push(change);
      }
    } catch (err) {
      this.#deps.logBudget.release(bytes);
      this.#heldBytes -= bytes;
      if (!target.applyAll || err instanceof SessionSpoiledError) return this.#fail(storeError(store, err));
      this.#lastTouched = Date.now();
      throw storeError(store, err);
    }
    this.#hasher.addLines(store, lines);
    this.#logBytes += bytes;
    this.#lastTouched = Date.now();
  }

  /** A one-shot session's changes, hashed when the session was opened, handed to the stores. */
  async applyAll(changes: Readonly<Record<string, readonly unknown[]>>): Promise<void> {
    try {
      for (const name of this.storeNames) {
        const step = this.#steps.get(name) as StoreStep;
        if (step.prepared || step.failed !== undefined) this.#log[name] = [...(changes[name] ?? [])];
        else await this.#stage(name, changes[name] ?? []);
      }
    } catch (err) {
      return this.#fail(err);
    }
  }

  /**
   * Steps 4a–4e: prepare every store, write the commit point, commit the stores in name
   * order and write the result. Answers the result record; an interruption ends the
   * session by its phase (see the module's comment).
   */
  async commit(): Promise<ResultRecord> {
    try {
      if (this.#phase === 'active') {
        await this.#prepareAll();
        this.#phase = 'deciding';
        this.#mayHaveCommitted = true;
        await this.#slot.writeCommitPoint(this.#log, this.sessionId);
        this.#phase = 'committing';
      }
      return await this.#commitStores();
    } catch (err) {
      return this.#fail(err);
    }
  }

  /**
   * Roll-forward of an adopted `committing` record: the stores recover (those holding the
   * marker skip), take the logged changes again, prepare and commit.
   */
  async rollForward(log: ChangeLog): Promise<ResultRecord> {
    try {
      await this.#committer.begin(this.key);
      for (const name of this.storeNames) await this.#stage(name, log[name] ?? []);
      await this.#prepareAll();
      return await this.#commitStores();
    } catch (err) {
      return this.#fail(err);
    }
  }

  /** Step 5: cancel an `active` session (a request, the idle timeout, shutdown). */
  async cancel(reason: string): Promise<void> {
    if (this.#phase !== 'active') throw new SessionEndedError(this.key);
    await this.#end(reason);
  }

  /**
   * Stop driving the session without touching its record: this instance may no longer
   * own it (its lease was lost), so whoever adopts the record decides its fate.
   */
  async relinquish(reason: string): Promise<void> {
    await this.#end(reason, { ownsRecord: false });
  }

  /**
   * Steps 4c–d. Every store first learns, in commit order, that the session will commit, so
   * a store that groups commits (sqlite) lets the next session in before any store waits
   * for its own commit to be durable; then the stores commit one by one, in that order, and
   * the result is written. The result is answered at once; the session ends when its record
   * landed (`RecordSlot.release`), or goes to recovery if that write failed.
   */
  async #commitStores(): Promise<ResultRecord> {
    await this.#eachStore((store, key) => store.decide?.(key));
    const { receipt } = await this.#committer.commitWithDetails(this.key);
    this.#phase = 'ended';
    this.#committed = receipt;
    this.#releaseLog();
    this.#slot.resultWritten.then(
      () => this.#ended({ outcome: 'committed', reason: 'committed' }),
      (err: unknown) => {
        this.logger.warn({ err }, 'writing the result failed; recovery writes it');
        this.#ended({ outcome: 'recover', reason: 'result write failed' });
      },
    );
    return receipt;
  }

  #ended(end: SessionEnd): void {
    this.#markEnded();
    this.#onEnd(this, end);
  }

  async #stage(storeName: string, changes: readonly unknown[]): Promise<void> {
    const store = this.#stores.get(storeName) as StoreSession;
    this.#log[storeName] ??= [];
    const logged = this.#log[storeName];
    for (const [index, change] of changes.entries()) {
      try {
        await store.apply(change);
      } catch (err) {
        throw storeError(storeName, atChange(err, index));
      }
      logged.push(change);
    }
  }

  /**
   * Step 4a: prepares every store in name order — except the stores prepared together
   * (`StoreStep.together`: they queue for their lock in call order), which are all asked
   * at the first one's turn, in one synchronous step, so that every such store's queue
   * serves sessions in the same order and no two sessions can wait for each other's
   * locks. One after the other, a store would hold its lock while the next one's prepare
   * made its round trip. A failure is still thrown at its store's own turn: the stores
   * named before it prepare as before (a participant hears its try, then the cancel).
   */
  async #prepareAll(): Promise<void> {
    let together: Map<string, PromiseSettledResult<void>> | undefined;
    for (const name of this.storeNames) {
      const step = this.#steps.get(name) as StoreStep;
      try {
        if (!step.together) {
          await step.prepare(this.#keyBytes);
          continue;
        }
        together ??= await this.#prepareTogether();
        const result = together.get(name);
        if (result?.status === 'rejected') throw result.reason;
      } catch (err) {
        throw storeError(name, err);
      }
    }
  }

  /** Asks every store prepared together to prepare, before any answers; settles when all have. */
  async #prepareTogether(): Promise<Map<string, PromiseSettledResult<void>>> {
    const steps = [...this.#steps.values()].filter((step) => step.together);
    const results = await Promise.allSettled(steps.map((step) => step.prepare(this.#keyBytes)));
    return new Map(steps.map((step, i) => [step.name, results[i] as PromiseSettledResult<void>]));
  }

  /** Runs `step` on every store in commit order; a store's error names the store. */
  async #eachStore(step: (store: StoreSession, key: Uint8Array, name: string) => Promise<void> | undefined): Promise<void> {
    for (const name of this.storeNames) {
      try {
        await step(this.#stores.get(name) as StoreSession, this.#keyBytes, name);
      } catch (err) {
        throw storeError(name, err);
      }
    }
  }

  /** Gives the log's bytes back to the budget: the session holds no changes any more. */
  #releaseLog(): void {
    this.#deps.logBudget.release(this.#heldBytes);
    this.#heldBytes = 0;
  }

  /**
   * Ends the session after `err` and throws what its caller should see: the error itself
   * before the commit point, a {@link SessionInterruptedError} from it on.
   */
  async #fail(err: unknown): Promise<never> {
    const from = this.#phase;
    const notOurs = err instanceof SlotTakenError;
    // A failed cancel was logged by the committer; the caller answers for the first error.
    await this.#end('error', { ownsRecord: !notOurs, cause: err }).catch(() => undefined);
    if (from === 'active' || notOurs) throw err;
    throw new SessionInterruptedError(this.key, from === 'deciding', err);
  }

  /**
   * The one way a session ends short of committing. Before the commit point the stores
   * are cancelled and the record deleted (a cancel: nothing reached any store). From the
   * commit point on — including a commit-point write whose outcome is unknown — the stores
   * are released and the record kept: it is recovery's to finish. A session that may no
   * longer own its record (`ownsRecord: false`) only releases its stores.
   */
  async #end(reason: string, how: { ownsRecord?: boolean; cause?: unknown } = {}): Promise<void> {
    const from = this.#phase;
    if (from === 'ended') return;
    const ownsRecord = how.ownsRecord ?? true;
    const begun = this.#committer.inSession;
    this.#phase = 'ended';
    try {
      if (from === 'active' && ownsRecord) {
        if (begun) await this.#committer.cancel();
        else await this.#slot.abandon();
      } else {
        await this.#committer.abort(how.cause ?? new Error(reason));
      }
    } finally {
      this.#releaseLog();
      this.#markEnded();
      const outcome = !ownsRecord ? 'released' : from !== 'active' ? 'recover' : begun ? 'cancelled' : 'released';
      this.#onEnd(this, { outcome, reason });
    }
  }
}

/**
 * One session under one key: its stores' committables driven by a MultiCommitter whose
 * slot is the session record itself, so one KV write serves as both (DESIGN.md steps 1–4).
 * @module
 */
import type { Logger } from 'pino';
import type { Committable } from '../core/committable.ts';
import type { Kv, KvOp } from '../kv/kv.ts';
import { ConstraintViolatedError } from '../kv/errors.ts';
import { MultiCommitter, compareNames } from '../core/multi-committer.ts';
import { keyBytes, toHex } from '../core/keys.ts';
import { ChangeHasher, sessionId } from '../core/session-id.ts';
import type { CommitResult, SessionSlot } from '../core/slot.ts';
import type { StoreSession } from '../stores/api.ts';
import { storeError } from './errors.ts';
import type { Failpoints } from './failpoints.ts';
import { deleteLogOps, parseResult, recordKeys, storeLog, type ChangeLog, type ResultRecord, type SessionRecord } from './records.ts';

/** What every session of one coordinator shares. */
export interface SessionDeps {
  readonly kv: Kv;
  readonly failpoints: Failpoints;
  readonly instanceId: string;
  readonly retentionSeconds: number;
  readonly logger: Logger;
}

/** Where a session starts from. */
export interface SessionStart {
  readonly key: string;
  readonly stores: ReadonlyMap<string, StoreSession>;
  readonly oneShot: boolean;
  /** The record of a crashed session this one resumes (adopted by this instance). */
  readonly adopted?: { readonly record: SessionRecord; readonly revision: number };
  /** Fingerprint of the request (store list for interactive begin, session ID for one-shot). */
  readonly fingerprint: string;
}

/** Raised when the session record was taken by someone else before our create. */
export class SlotTakenError extends Error {
  constructor(key: string) {
    super(`session record for ${key} already exists`);
  }
}

/**
 * One store as the MultiCommitter sees it: names the store in its errors, and fires
 * `commit.afterStore.N` after the N-th store (in commit order) committed.
 */
class StoreStep implements Committable {
  constructor(
    readonly name: string,
    readonly inner: Committable,
    readonly point: string,
    readonly failpoints: Failpoints,
  ) {}

  async begin(key: Uint8Array): Promise<void> {
    await this.inner.begin(key).catch((err: unknown) => Promise.reject(storeError(this.name, err)));
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
    await this.inner.cancel().catch((err: unknown) => Promise.reject(storeError(this.name, err)));
  }
}

/** A session this instance drives. Callers serialise requests with `run`. */
export class Session implements SessionSlot {
  readonly key: string;
  readonly oneShot: boolean;
  readonly stores: ReadonlyMap<string, StoreSession>;
  readonly log: ChangeLog = {};
  readonly startedAt: string;
  readonly fingerprint: string;
  readonly committer: MultiCommitter;
  readonly logger: Logger;
  /** `active` until the commit point is written, then `committing`. */
  state: 'active' | 'committing' = 'active';
  logBytes = 0;
  lastTouched = Date.now();
  /** Settles when the session ends (committed or not); concurrent one-shot retries await it. */
  outcome: Promise<unknown> | undefined;
  /** The result record, once `release` wrote it. */
  result: ResultRecord | undefined;
  readonly #deps: SessionDeps;
  /** The key as the stores take it. */
  readonly #keyBytes: Uint8Array;
  readonly #adopted: boolean;
  /** Each store's running hash of its logged changes, fed the lines the coordinator validated. */
  readonly #logHashers = new Map<string, ChangeHasher>();
  #record: SessionRecord | undefined;
  #revision = 0;
  #queue: Promise<unknown> = Promise.resolve();

  constructor(deps: SessionDeps, start: SessionStart) {
    this.#deps = deps;
    this.key = start.key;
    this.#keyBytes = keyBytes(start.key);
    this.oneShot = start.oneShot;
    this.stores = start.stores;
    this.fingerprint = start.fingerprint;
    this.logger = deps.logger.child({ key: start.key });
    this.#adopted = start.adopted !== undefined;
    this.#record = start.adopted?.record;
    this.#revision = start.adopted?.revision ?? 0;
    this.startedAt = start.adopted?.record.startedAt ?? new Date().toISOString();
    if (start.adopted?.record.state === 'committing') this.state = 'committing';
    const names = [...start.stores.keys()].sort(compareNames);
    const committables = names.map((name, i) => {
      const store = start.stores.get(name) as StoreSession;
      return [name, new StoreStep(name, store, `commit.afterStore.${i + 1}`, deps.failpoints)] as const;
    });
    this.committer = new MultiCommitter(undefined, committables, { slot: this, logger: this.logger });
  }

  /** Runs `step` after every earlier step of this session: one request at a time. */
  run<T>(step: () => Promise<T>): Promise<T> {
    const next = this.#queue.then(step, step);
    this.#queue = next.catch(() => undefined);
    return next;
  }

  /** The record revision this session last wrote or adopted (0 before the first write). */
  get revision(): number {
    return this.#revision;
  }

  // --- SessionSlot: the session record is the MultiCommitter's slot ---

  async read(): Promise<Uint8Array | undefined> {
    return this.#adopted ? this.#keyBytes : undefined;
  }

  /** Interactive sessions create their record now; one-shot ones at the commit point. */
  async claim(): Promise<void> {
    if (this.oneShot) return;
    const record = this.#newRecord('active', {});
    await this.#createRecord(record);
    await this.#deps.failpoints.fire('begin.afterRecord');
  }

  /** Step 4d: write the result and delete the session record in one transaction. */
  async release(_key: Uint8Array, result: CommitResult): Promise<void> {
    await this.#deps.failpoints.fire('commit.beforeResult');
    const stores = Object.fromEntries([...result.stores].map(([name, id]) => [name, toHex(id)]));
    const sessionIdHex = toHex(result.sessionId);
    const value: ResultRecord = { sessionId: sessionIdHex, stores, committedAt: new Date().toISOString(), fingerprint: sessionIdHex };
    const record = this.#record as SessionRecord;
    const ops: KvOp[] = [
      { type: 'create', key: recordKeys.result(this.key), value: JSON.stringify(value), options: { ttlSeconds: this.#deps.retentionSeconds } },
      { type: 'delete', key: recordKeys.session(this.key), revision: this.#revision },
      ...(await deleteLogOps(this.#deps.kv, this.key, record)),
    ];
    try {
      await this.#deps.kv.txn(ops);
    } catch (err) {
      if (!(err instanceof ConstraintViolatedError)) throw err;
      // Someone else (an adopter of this session) wrote the same result first: fine.
      const existing = await this.#deps.kv.get(recordKeys.result(this.key));
      if (!existing || parseResult(existing.value).sessionId !== value.sessionId) throw err;
    }
    this.result = value;
  }

  /** Set when the record must outlive a cancel of the stores (its fate is recovery's). */
  keepRecord = false;

  async abandon(): Promise<void> {
    if (this.keepRecord || this.#revision === 0 || !this.#record) return;
    const ops: KvOp[] = [
      { type: 'delete', key: recordKeys.session(this.key), revision: this.#revision },
      ...(await deleteLogOps(this.#deps.kv, this.key, this.#record)),
    ];
    await this.#deps.kv.txn(ops);
    this.#revision = 0;
  }

  // --- the commit protocol ---

  /** Step 3: hands changes to one store in order and appends them to the log. */
  async apply(storeName: string, changes: readonly unknown[]): Promise<void> {
    const store = this.stores.get(storeName) as StoreSession;
    const logged = (this.log[storeName] ??= []);
    for (const change of changes) {
      try {
        await store.apply(change);
      } catch (err) {
        throw storeError(storeName, err);
      }
      logged.push(change);
    }
  }

  /** Adds changes just applied to `storeName`, as their canonical lines, to the log's hash. */
  hashLog(storeName: string, lines: readonly string[]): void {
    let hasher = this.#logHashers.get(storeName);
    if (!hasher) this.#logHashers.set(storeName, (hasher = new ChangeHasher()));
    for (const line of lines) hasher.addLine(line);
  }

  /**
   * The session ID the hashed log defines: what the stores' IDs will hash to, stores that
   * got no change included.
   */
  logSessionId(): string {
    return toHex(sessionId(this.committer.names.map((name) => [name, (this.#logHashers.get(name) ?? new ChangeHasher()).digest()] as const)));
  }

  /** Step 4a: every store prepares; failures surface here, before the commit point. */
  async prepare(): Promise<void> {
    await this.#eachStore((store, key) => store.prepare(key));
  }

  /**
   * Step 4b, the commit point: the record turns `committing` with the full change log.
   * A one-shot session creates its record here, guarded against an existing result.
   */
  async writeCommitPoint(sessionIdHex: string): Promise<void> {
    const logFields = await storeLog(this.#deps.kv, this.key, this.log);
    const record = { ...this.#newRecord('committing', logFields), fingerprint: sessionIdHex };
    if (this.oneShot && this.#revision === 0) {
      await this.#createRecord(record);
      await this.#deps.failpoints.fire('begin.afterRecord');
    } else {
      this.#revision = await this.#deps.kv.update(recordKeys.session(this.key), JSON.stringify(record), this.#revision);
      this.#record = record;
    }
    this.state = 'committing';
    await this.#deps.failpoints.fire('commit.afterIntent');
  }

  /**
   * Steps 4c–d. Every store first learns, in commit order, that the session will commit, so
   * a store that groups commits (sqlite) lets the next session in before any store waits
   * for its own commit to be durable; then the stores commit one by one, in that order, and
   * the result is written.
   */
  async commitStores(): Promise<ResultRecord> {
    try {
      await this.#eachStore((store, key) => store.decide?.(key));
    } catch (err) {
      // Past the commit point: keep the record for recovery, release the stores.
      this.keepRecord = true;
      await this.committer.cancel().catch(() => undefined);
      throw err;
    }
    await this.committer.commitWithDetails(this.key);
    return this.result as ResultRecord;
  }

  /** Runs `step` on every store in commit order; a store's error names the store. */
  async #eachStore(step: (store: StoreSession, key: Uint8Array) => Promise<void> | undefined): Promise<void> {
    for (const name of this.committer.names) {
      try {
        await step(this.stores.get(name) as StoreSession, this.#keyBytes);
      } catch (err) {
        throw storeError(name, err);
      }
    }
  }

  #newRecord(state: SessionRecord['state'], logFields: Pick<SessionRecord, 'log' | 'logChunks'>): SessionRecord {
    return {
      state,
      stores: [...this.stores.keys()].sort(compareNames),
      owner: this.#deps.instanceId,
      startedAt: this.startedAt,
      fingerprint: this.fingerprint,
      ...(this.oneShot ? { oneShot: true } : {}),
      ...logFields,
    };
  }

  async #createRecord(record: SessionRecord): Promise<void> {
    try {
      this.#revision = await this.#deps.kv.txn([
        { type: 'check', key: recordKeys.result(this.key), exists: false },
        { type: 'create', key: recordKeys.session(this.key), value: JSON.stringify(record) },
      ]);
      this.#record = record;
    } catch (err) {
      if (err instanceof ConstraintViolatedError) throw new SlotTakenError(this.key);
      throw err;
    }
  }
}

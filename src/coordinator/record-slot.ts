/**
 * The session record as the MultiCommitter's slot: one KV write serves as both. An
 * interactive session creates its `active` record at begin; a one-shot session writes its
 * first record at the commit point. Releasing the slot writes the result and deletes the
 * record in one transaction (DESIGN.md steps 1, 4b and 4d).
 * @module
 */
import type { CommitResult, SessionSlot } from '../core/slot.ts';
import { keyBytes, toHex } from '../core/keys.ts';
import type { Kv, KvOp } from '../kv/kv.ts';
import { ConstraintViolatedError } from '../kv/errors.ts';
import type { Failpoints } from './failpoints.ts';
import { deleteSessionOps, parseResult, recordKeys, storeLog, type ChangeLog, type ResultRecord, type SessionRecord } from './records.ts';

/** What every session record of one coordinator shares. */
export interface RecordDeps {
  readonly kv: Kv;
  readonly failpoints: Failpoints;
  readonly instanceId: string;
  readonly retentionSeconds: number;
  /** Answer before the result write lands (see `CoordinatorOptions.earlyReply`). */
  readonly earlyReply?: boolean;
}

/** The record was created by someone else (another request, another instance) before ours. */
export class SlotTakenError extends Error {
  constructor(key: string) {
    super(`session record for ${key} already exists`);
  }
}

/** What the record says about the session, fixed when it starts. */
export interface RecordStart {
  readonly key: string;
  /** The session's stores in commit order. */
  readonly stores: readonly string[];
  readonly oneShot: boolean;
  readonly startedAt: string;
  /** The record of a crashed session this one resumes (adopted by this instance). */
  readonly adopted?: { readonly record: SessionRecord; readonly revision: number };
  /** The attempt of the key the session's participants see (kept in every record written). */
  readonly attempt: string;
  /**
   * The session's participants (stores with \`cancelAttempt\`), which the result lists as
   * confirmed. With any, a one-shot writes its record at begin too: recovery must find the
   * attempt of a try sent before the commit point, to cancel it.
   */
  readonly participants: readonly string[];
  /** A one-shot's session ID, known from the start (its early record carries it). */
  readonly sessionId?: string;
}

/** One session's record in the coordinator KV. */
export class RecordSlot implements SessionSlot<ResultRecord> {
  readonly #deps: RecordDeps;
  readonly #start: RecordStart;
  #record: SessionRecord | undefined;
  #revision: number;
  #resultWritten: Promise<void> = Promise.resolve();

  constructor(deps: RecordDeps, start: RecordStart) {
    this.#deps = deps;
    this.#start = start;
    this.#record = start.adopted?.record;
    this.#revision = start.adopted?.revision ?? 0;
  }

  /** The revision this slot last wrote or adopted (0 while it holds no record). */
  get revision(): number {
    return this.#revision;
  }

  /**
   * An adopted record past its commit point holds the key already: the MultiCommitter then
   * recovers (`beginRecovery`: stores holding the marker skip, a two-phase store commits
   * what was prepared). An adopted `active` record does not: nothing of it is decided, so
   * its stores begin afresh and nothing prepared before the crash can commit with the
   * resumed session (docs/recovery.md, gap 1).
   */
  async read(): Promise<Uint8Array | undefined> {
    const adopted = this.#start.adopted;
    return adopted && adopted.record.state !== 'active' ? keyBytes(this.#start.key) : undefined;
  }

  /**
   * Interactive sessions create their record now (an adopted one exists already); one-shot
   * ones at the commit point, unless they have participants.
   */
  async claim(): Promise<void> {
    const { oneShot, participants, sessionId, adopted } = this.#start;
    if (adopted || (oneShot && participants.length === 0)) return;
    await this.#create({ ...this.#newRecord('active', {}), ...(oneShot && sessionId ? { sessionId } : {}) });
    await this.#deps.failpoints.fire('begin.afterRecord');
  }

  /**
   * Step 4b, the commit point: the record turns `committing` with the full change log and
   * the session ID it defines. A one-shot session creates its record here, guarded against
   * an existing result.
   */
  async writeCommitPoint(log: ChangeLog, sessionId: string): Promise<void> {
    const record: SessionRecord = { ...this.#newRecord('committing', await storeLog(this.#deps.kv, this.#start.key, log)), sessionId };
    if (this.#start.oneShot && this.#revision === 0) {
      await this.#create(record);
      await this.#deps.failpoints.fire('begin.afterRecord');
    } else {
      this.#revision = await this.#deps.kv.update(recordKeys.session(this.#start.key), JSON.stringify(record), this.#revision);
      this.#record = record;
    }
    await this.#deps.failpoints.fire('commit.afterIntent');
  }

  /**
   * Settles when the result written by {@link release} landed; rejects if it did not (the
   * record then stays `committing`, and recovery writes the same result).
   */
  get resultWritten(): Promise<void> {
    return this.#resultWritten;
  }

  /**
   * Step 4d: write the result and delete the session record in one transaction. Every store
   * has committed, so the answer is already certain: with `earlyReply` the returned result
   * does not wait for the write (see {@link resultWritten}), which takes one KV round trip
   * off the reply. A retry meanwhile finds the session still open here and waits for the
   * write; on another instance it finds the `committing` record and waits for it to settle
   * (`settle.ts`). A crash before the write lands leaves the `committing` record, whose
   * roll-forward writes the same result (the stores hold their markers and return the same
   * IDs).
   */
  async release(_key: Uint8Array, result: CommitResult): Promise<ResultRecord> {
    await this.#deps.failpoints.fire('commit.beforeResult');
    const value: ResultRecord = {
      sessionId: toHex(result.sessionId),
      stores: Object.fromEntries([...result.stores].map(([name, id]) => [name, toHex(id)])),
      committedAt: new Date().toISOString(),
      ...(this.#start.participants.length > 0 ? { confirmed: this.#start.participants } : {}),
    };
    this.#resultWritten = this.#writeResult(value);
    if (!this.#deps.earlyReply) await this.#resultWritten;
    // Observed by the session; a failure is its to report.
    else this.#resultWritten.catch(() => undefined);
    return value;
  }

  async #writeResult(value: ResultRecord): Promise<void> {
    if (this.#deps.earlyReply && this.#deps.failpoints.armed('commit.afterAnswer')) {
      // Let the answer leave first: the point is "answered, result not yet written".
      await new Promise((resolve) => setImmediate(resolve));
      await this.#deps.failpoints.fire('commit.afterAnswer');
    }
    const key = this.#start.key;
    const ops: KvOp[] = [
      { type: 'create', key: recordKeys.result(key), value: JSON.stringify(value), options: { ttlSeconds: this.#deps.retentionSeconds } },
      ...(await deleteSessionOps(this.#deps.kv, key, this.#record as SessionRecord, this.#revision)),
    ];
    try {
      // Lazy: losing the result write to a machine failure leaves the `committing` record, as a
      // crash just before it would, and recovery rolls forward to the same answer (the stores
      // keep their markers for the retention, far longer than the next durable write takes).
      await this.#deps.kv.txn(ops, { lazySync: true });
    } catch (err) {
      if (!(err instanceof ConstraintViolatedError)) throw err;
      // Someone else (an adopter of this session) wrote the same result first: fine.
      const existing = await this.#deps.kv.get(recordKeys.result(key));
      if (!existing || parseResult(existing.value).sessionId !== value.sessionId) throw err;
    }
    this.#revision = 0;
  }

  /** Deletes the record (with its log chunks) after a cancel, if this session wrote one. */
  async abandon(): Promise<void> {
    if (this.#revision === 0 || !this.#record) return;
    await this.#deps.kv.txn(await deleteSessionOps(this.#deps.kv, this.#start.key, this.#record, this.#revision));
    this.#revision = 0;
  }

  #newRecord(state: SessionRecord['state'], logFields: Pick<SessionRecord, 'log' | 'logChunks'>): SessionRecord {
    return {
      state,
      stores: this.#start.stores,
      owner: this.#deps.instanceId,
      startedAt: this.#start.startedAt,
      ...(this.#start.oneShot ? { oneShot: true } : {}),
      attempt: this.#start.attempt,
      ...logFields,
    };
  }

  async #create(record: SessionRecord): Promise<void> {
    try {
      this.#revision = await this.#deps.kv.txn([
        { type: 'check', key: recordKeys.result(this.#start.key), exists: false },
        { type: 'create', key: recordKeys.session(this.#start.key), value: JSON.stringify(record) },
      ]);
      this.#record = record;
    } catch (err) {
      if (err instanceof ConstraintViolatedError) throw new SlotTakenError(this.#start.key);
      throw err;
    }
  }
}

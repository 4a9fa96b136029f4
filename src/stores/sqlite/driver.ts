/**
 * One session's driver on a `sqlite` store, run on the store's own thread (`worker.ts`):
 * compiles changes as they arrive, runs them all at prepare with the marker row.
 * @module
 */
import { describeKey, fromHex, toHex } from '../../core/keys.ts';
import { atChange, MarkerExistsError } from '../errors.ts';
import type { StoreDriver } from '../helper.ts';
import type { GroupMember, SqliteDatabase } from './database.ts';
import { sqliteCode, type CheckedChange, type SqliteChange } from './statements.ts';

/** One session's driver: compiles changes as they arrive, runs them all at prepare. */
export class SqliteDriver implements StoreDriver<SqliteChange> {
  readonly #db: SqliteDatabase;
  #statements: CheckedChange[] = [];
  /**
   * `holding`: prepared, holds the write lock and its savepoint. `decided`: its writes wait
   * in the group (`#member`) for the COMMIT that makes them durable.
   */
  #state: 'idle' | 'holding' | 'decided' = 'idle';
  #member: GroupMember | undefined;

  constructor(db: SqliteDatabase) {
    this.#db = db;
  }

  async findMarker(key: Uint8Array): Promise<Uint8Array | undefined> {
    const row = await this.#db.whenNotBusy(() => this.#db.markers.find.get(describeKey(key)));
    return row && fromHex(row.session_id);
  }

  async open(): Promise<void> {
    this.#statements = [];
  }

  /** How many statements the session held when its current request started. */
  #saved = 0;

  /** One request's changes start. */
  async savepoint(): Promise<void> {
    this.#saved = this.#statements.length;
  }

  /** The request failed: drop the statements it added (nothing ran yet: they run at prepare). */
  async rollbackToSavepoint(): Promise<void> {
    this.#statements.length = Math.min(this.#saved, this.#statements.length);
  }

  async releaseSavepoint(): Promise<void> {
    this.#saved = this.#statements.length;
  }

  /** Compiles and checks the change now, so a bad statement fails at apply, not at commit. */
  async apply(change: SqliteChange): Promise<void> {
    const afterSchemaChange = this.#statements.some((checked) => checked.changesSchema);
    this.#statements.push(this.#db.statements.check(change, afterSchemaChange));
  }

  /**
   * A one-shot's step before its commit point: queues for the write lock at once, in the
   * order the calls arrive (see `Session`: a session asks all its sqlite stores in one
   * step, so every store's queue serves sessions in the same order), then, holding it, the
   * marker lookup and, without a marker, `open`, `apply` of each change and the prepare.
   * Returns the stored ID if there is a marker; nothing is held then.
   */
  async openAndPrepare(key: Uint8Array, changes: readonly SqliteChange[], id: Uint8Array): Promise<Uint8Array | undefined> {
    await this.#db.enter();
    try {
      const stored = await this.#db.whenNotBusy(() => this.#db.markers.find.get(describeKey(key)));
      if (stored) {
        await this.#db.leave();
        return fromHex(stored.session_id);
      }
      this.#statements = [];
      for (const [index, change] of changes.entries()) this.#statements.push(this.#check(change, index));
    } catch (err) {
      this.#statements = [];
      await this.#db.leave();
      throw err;
    }
    await this.#runHeld(key, id);
    return undefined;
  }

  /**
   * Takes the write lock (queueing behind other sessions, in the order of the calls), then
   * runs the session's statements under it (see {@link #runHeld}).
   */
  async prepare(key: Uint8Array, id: Uint8Array): Promise<void> {
    await this.#db.enter();
    await this.#runHeld(key, id);
  }

  /** Compiles and checks one of a one-shot's changes, named by its index if refused. */
  #check(change: SqliteChange, index: number): CheckedChange {
    try {
      const afterSchemaChange = this.#statements.some((checked) => checked.changesSchema);
      return this.#db.statements.check(change, afterSchemaChange);
    } catch (err) {
      throw atChange(err, index);
    }
  }

  /**
   * With the write lock and the session's savepoint: inserts the marker first — so a
   * second committer of the same key stops at the marker, before its changes can fail on
   * the first one's rows — then runs the changes. Keeps the lock until the session is
   * decided or rolled back.
   */
  async #runHeld(key: Uint8Array, id: Uint8Array): Promise<void> {
    this.#state = 'holding';
    try {
      this.#insertMarker(key, id);
      for (const [index, change] of this.#statements.entries()) this.#db.statements.run(change, index);
    } catch (err) {
      this.#state = 'idle';
      this.#statements = [];
      // A marker another session of the group wrote is reported only once it is durable.
      const pending = err instanceof MarkerExistsError && !this.#db.markerCommitted(describeKey(key));
      await this.#db.leave(pending);
      throw err;
    }
  }

  /** The session will commit: its writes join the group and the next session may go on. */
  async decide(): Promise<void> {
    if (this.#state !== 'holding') return;
    this.#state = 'decided';
    this.#statements = [];
    this.#member = await this.#db.decide();
  }

  /** Returns once the session's group is committed (fsynced). */
  async commit(key: Uint8Array, id: Uint8Array): Promise<void> {
    if (this.#state === 'idle') await this.prepare(key, id);
    if (this.#state === 'holding') await this.decide();
    const member = this.#member as GroupMember;
    this.#state = 'idle';
    this.#member = undefined;
    await this.#db.durable(member);
  }

  /**
   * Undoes the session's savepoint and lets the next queued session in. A decided session
   * is past its commit point: its writes stay in the group. Safe to call twice.
   */
  async rollback(): Promise<void> {
    this.#statements = [];
    const { state, member } = { state: this.#state, member: this.#member };
    this.#state = 'idle';
    this.#member = undefined;
    if (state === 'holding') await this.#db.leave();
    // Past its commit point the session's writes stay: see that they get committed.
    if (member) void this.#db.durable(member).catch(() => undefined);
  }

  #insertMarker(key: Uint8Array, id: Uint8Array): void {
    const text = describeKey(key);
    try {
      this.#db.markers.insert.run(text, toHex(id), new Date().toISOString());
    } catch (err) {
      if (sqliteCode(err) !== 'SQLITE_CONSTRAINT_PRIMARYKEY') throw err;
      const row = this.#db.markers.findInTransaction.get(text);
      if (!row) throw err;
      throw new MarkerExistsError(key, fromHex(row.session_id));
    }
  }
}

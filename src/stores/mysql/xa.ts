/**
 * XA mode of a `mysql` store: the xids of its transactions, finding, committing and rolling
 * back prepared ones, and resolving those a crashed instance left behind.
 *
 * An xid is `X'gtrid', X'bqual', formatID`: formatID {@link XA_FORMAT_ID} ("CMTD"); gtrid and
 * bqual together hold `commitd:<tag>:`, the key's bytes and 8 random bytes of the attempt.
 * `<tag>` is 8 hex digits of a hash of the database holding the marker table: xids are unique
 * per *server*, so two stores on one server (different databases) must not share them. The
 * attempt's bytes keep a new attempt of a key clear of an earlier one whose connection still
 * holds its xid (MySQL claims an xid at `XA START`, not at prepare); at most one attempt of a
 * key is ever prepared, since each holds the key's marker row. The key's bytes are in the xid
 * as they are, so `XA RECOVER` gives the key back. gtrid and bqual hold 64 bytes each, so
 * keys of more than {@link XA_MAX_KEY_BYTES} bytes cannot use XA mode.
 * @module
 */
import { randomBytes } from 'node:crypto';
import type mysql from 'mysql2/promise';
import { CommitdError, errorMessage } from '../../errors/core.ts';
import { describeKey, toHex } from '../../core/keys.ts';
import type { OrphanDecision, StoreContext } from '../api.ts';
import { MysqlOptionsError } from './database.ts';
import { errnoOf, ER_XAER_NOTA } from './statements.ts';

/** "CMTD": marks commitd's xids among every XA transaction of the server. */
export const XA_FORMAT_ID = 0x434d5444;
const XID_PART_BYTES = 64;
const PREFIX = 'commitd:';
/** `commitd:` + 8 hex digits + `:`. */
const PREFIX_BYTES = PREFIX.length + 9;
const ATTEMPT_BYTES = 8;
/** Keys longer than this (in bytes) cannot be committed in XA mode: their xid would not fit. */
export const XA_MAX_KEY_BYTES = 2 * XID_PART_BYTES - PREFIX_BYTES - ATTEMPT_BYTES;

/** What XA mode runs its statements through: the store's pool (autocommit). */
export interface XaDatabase {
  readonly name: string;
  readonly tag: string;
  query<R extends mysql.RowDataPacket[] | mysql.ResultSetHeader>(sql: string, params?: unknown[]): Promise<R>;
}

/** One xid, as commitd writes it in a statement. */
export interface Xid {
  readonly key: Uint8Array;
  /** `X'…',X'…',<formatID>`: hex and digits only, safe inside any XA statement. */
  readonly sql: string;
}

/** The XA transactions of one marker table. */
export class XaTransactions {
  readonly #db: XaDatabase;
  readonly #prefix: Buffer;

  private constructor(db: XaDatabase) {
    this.#db = db;
    this.#prefix = Buffer.from(`${PREFIX}${db.tag}:`, 'latin1');
  }

  /**
   * Checks that the server lets this user run XA (`XA RECOVER` needs `XA_RECOVER_ADMIN` on
   * MySQL 8) on an engine that supports it; a clear error at store open otherwise.
   */
  static async open(db: XaDatabase): Promise<XaTransactions> {
    try {
      await db.query('XA RECOVER');
    } catch (err) {
      throw new MysqlOptionsError(
        `mysql store ${db.name} has xa set, but the server refused XA RECOVER (${errorMessage(err)}): ` +
          'grant the user XA_RECOVER_ADMIN (MySQL 8) or turn xa off',
      );
    }
    const rows = await db.query<mysql.RowDataPacket[]>("SELECT XA AS xa FROM information_schema.ENGINES WHERE SUPPORT = 'DEFAULT'");
    const xa = (rows[0] as { xa: string | null } | undefined)?.xa;
    if (xa !== 'YES') {
      throw new MysqlOptionsError(
        `mysql store ${db.name} has xa set, but the server's default storage engine does not support XA: make InnoDB the default or turn xa off`,
      );
    }
    return new XaTransactions(db);
  }

  /** A new xid for an attempt of `key`. */
  xid(key: Uint8Array): Xid {
    if (key.length > XA_MAX_KEY_BYTES) {
      throw new MysqlOptionsError(
        `mysql store ${this.#db.name} runs in XA mode, which takes keys of at most ${XA_MAX_KEY_BYTES} bytes; ` +
          `key ${JSON.stringify(describeKey(key))} has ${key.length}`,
      );
    }
    return this.#xidOf(Buffer.concat([this.#prefix, key, randomBytes(ATTEMPT_BYTES)]), key);
  }

  #xidOf(whole: Buffer, key: Uint8Array): Xid {
    const gtrid = whole.subarray(0, XID_PART_BYTES);
    const bqual = whole.subarray(XID_PART_BYTES);
    return { key, sql: `X'${toHex(gtrid)}',X'${toHex(bqual)}',${XA_FORMAT_ID}` };
  }

  /** The xids of this marker table's prepared transactions. */
  async listPrepared(): Promise<Xid[]> {
    const rows = await this.#db.query<mysql.RowDataPacket[]>('XA RECOVER');
    const xids: Xid[] = [];
    for (const row of rows as { formatID: number; data: Buffer | string }[]) {
      if (Number(row.formatID) !== XA_FORMAT_ID) continue;
      const data = Buffer.isBuffer(row.data) ? row.data : Buffer.from(row.data, 'latin1');
      if (data.length < this.#prefix.length + ATTEMPT_BYTES || !data.subarray(0, this.#prefix.length).equals(this.#prefix)) continue;
      xids.push(this.#xidOf(data, new Uint8Array(data.subarray(this.#prefix.length, data.length - ATTEMPT_BYTES))));
    }
    return xids;
  }

  /** The xid of `key`'s prepared transaction, if one is prepared. */
  async findPrepared(key: Uint8Array): Promise<Xid | undefined> {
    return (await this.listPrepared()).find((xid) => Buffer.from(xid.key).equals(Buffer.from(key)));
  }

  /** `XA COMMIT`; false when no such prepared transaction exists (already finished by someone). */
  commitPrepared(xid: Xid): Promise<boolean> {
    return this.#finish('COMMIT', xid);
  }

  /** `XA ROLLBACK`; false when no such prepared transaction exists (already finished by someone). */
  rollbackPrepared(xid: Xid): Promise<boolean> {
    return this.#finish('ROLLBACK', xid);
  }

  /**
   * Commits or rolls back the prepared transactions of this marker table, as `decide` says
   * for each key; `keep` leaves one alone. Tries every one, then throws the first failure.
   */
  async resolveOrphans(logger: StoreContext['logger'], decide: OrphanDecision): Promise<void> {
    const failures: unknown[] = [];
    for (const xid of await this.listPrepared()) {
      const key = xid.key;
      try {
        const decision = await decide(key);
        if (decision === 'commit') await this.commitPrepared(xid);
        else if (decision === 'rollback') await this.rollbackPrepared(xid);
        if (decision !== 'keep') logger.info({ key: describeKey(key), decision }, 'resolved a prepared XA transaction');
      } catch (err) {
        logger.warn({ key: describeKey(key), error: errorMessage(err) }, 'could not resolve a prepared XA transaction');
        failures.push(err);
      }
    }
    if (failures.length === 1) throw failures[0];
    if (failures.length > 1)
      throw new AggregateError(failures, `mysql store ${this.#db.name}: ${failures.length} prepared XA transactions could not be resolved`);
  }

  async #finish(verb: 'COMMIT' | 'ROLLBACK', xid: Xid): Promise<boolean> {
    try {
      await this.#db.query(`XA ${verb} ${xid.sql}`);
      return true;
    } catch (err) {
      if (errnoOf(err) === ER_XAER_NOTA) return false;
      throw err;
    }
  }
}

/** A fresh session found an unresolved prepared XA transaction for its key. */
export class XaPendingError extends CommitdError {
  constructor(storeName: string, key: Uint8Array) {
    super(
      'SESSION_BUSY',
      `${storeName} holds a prepared XA transaction for key ${JSON.stringify(describeKey(key))} from an earlier session; ` +
        'it must be committed or rolled back (orphan resolution at recovery) before the key can begin again',
    );
  }
}

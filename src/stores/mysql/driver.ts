/**
 * A session on a `mysql` store: one pooled connection and one transaction (`START
 * TRANSACTION`, or `XA START` in XA mode), held from `begin` to commit or rollback; changes
 * run at once under the store's deadline, the marker row goes in at prepare (then `XA END` +
 * `XA PREPARE` in XA mode), and every failure is sorted into a lost connection, a passing
 * failure or a rejected change.
 *
 * A failed statement stops the session for writing until the request is undone: each request
 * runs under commitd's savepoint (`SAVEPOINT commitd_request`, allowed inside an XA
 * transaction too), and `ROLLBACK TO SAVEPOINT` brings the transaction back to where it was
 * before the request. MySQL rolls back only the statement for most errors but the whole
 * transaction for some (a deadlock, a lock wait timeout under `innodb_rollback_on_timeout`),
 * after which later statements would autocommit one by one: then the savepoint is gone (or
 * the server reports no open transaction), and the driver reports the transaction lost like
 * a lost connection, so that the helper reopens it (`reopen`: a new connection, a new xid
 * attempt in XA mode) and applies the session's changes again. The same heals a connection
 * lost before the commit point (killed, a server restart, the server's idle limit).
 * @module
 */
import type mysql from 'mysql2/promise';
import { CommitdError, errorMessage } from '../../errors/core.ts';
import { describeKey, sameKey, toHex } from '../../core/keys.ts';
import { ChangeRejectedError, MarkerExistsError, StoreUnavailableError } from '../errors.ts';
import type { StoreDriver } from '../helper.ts';
import { MARKER_KEY_MAX_BYTES, MysqlOptionsError, type MysqlDatabase } from './database.ts';
import { checkChange } from './guard.ts';
import { asMysqlError, ER_DUP_ENTRY, errnoOf, isConnectionFailure, isTransient, SERVER_STATUS_IN_TRANS, type MysqlChange } from './statements.ts';
import { XaPendingError, type XaTransactions, type Xid } from './xa.ts';

/** The earlier statement failure that ended the session's transaction for writing. */
interface Rejection {
  readonly errno: number | undefined;
  readonly message: string;
}

/** The savepoint a request's changes run under (one request at a time per session). */
const REQUEST_SAVEPOINT = 'commitd_request';

/** Why a session's transaction is gone though its connection may not be: the server rolled it back. */
class TransactionEnded extends Error {}

/** Where the session's transaction stands. */
type TransactionState = 'none' | 'open' | 'prepared';

/** One session's driver: one connection and one transaction, held from `open` to commit or rollback. */
export class MysqlDriver implements StoreDriver<MysqlChange> {
  readonly #db: MysqlDatabase;
  /** Set in XA mode. */
  readonly #xa: XaTransactions | undefined;
  /** Set by the session while `beginRecovery` runs: a prepared transaction found then is committed, not refused. */
  recovering = false;
  #conn: mysql.PoolConnection | undefined;
  /** Why the connection is gone; once set, every step fails and the connection is destroyed. */
  #lost: unknown;
  /** The failure that ended the transaction for writing; once set, every step fails. */
  #rejected: Rejection | undefined;
  #state: TransactionState = 'none';
  #markerWritten = false;
  /** XA: the xid, and whether XA PREPARE was sent (it may have succeeded even if the reply was lost). */
  #xid: Xid | undefined;
  #prepareSent = false;
  /** Past `commit`, a rollback must leave a prepared transaction to the adopter. */
  #commitAttempted = false;
  /** A statement committed the transaction half-way: what it held is in the store, so it cannot be reopened. */
  #committedHalfway = false;

  constructor(db: MysqlDatabase, xa: XaTransactions | undefined) {
    this.#db = db;
    this.#xa = xa;
  }

  /** Attached while the session holds its connection: mysql2 emits 'error' on it when the connection dies. */
  readonly #onConnectionError = (err: unknown): void => {
    this.#lost ??= err;
  };

  async findMarker(key: Uint8Array): Promise<Uint8Array | undefined> {
    await this.#db.ensureMarkerTable();
    const stored = await this.#db.readMarker(key);
    const xa = this.#xa;
    if (stored || !xa) return stored;
    const xid = await xa.findPrepared(key);
    if (!xid) return undefined;
    if (!this.recovering) throw new XaPendingError(this.#db.name, key);
    // The adopter's path: the earlier session prepared its changes; commit them instead of
    // re-applying. If someone else finished the transaction first, the marker tells how.
    await xa.commitPrepared(xid);
    return this.#db.readMarker(key);
  }

  async open(key: Uint8Array): Promise<void> {
    this.#resetState();
    if (key.length > MARKER_KEY_MAX_BYTES) {
      throw new MysqlOptionsError(
        `mysql store ${this.#db.name} takes keys of at most ${MARKER_KEY_MAX_BYTES} bytes; key ${JSON.stringify(describeKey(key))} has ${key.length}`,
      );
    }
    this.#xid = this.#xa?.xid(key);
    const conn = await this.#db.connect();
    conn.on('error', this.#onConnectionError);
    this.#conn = conn;
    await this.#run(this.#xid ? `XA START ${this.#xid.sql}` : 'START TRANSACTION');
    this.#state = 'open';
  }

  /**
   * After a lost connection or transaction (`connectionLost`): a new connection and
   * transaction, as `open` made (XA: a new attempt of the xid, so the old one, if the server
   * still holds it, is in nobody's way); the helper re-applies the changes.
   */
  async reopen(key: Uint8Array): Promise<void> {
    await this.open(key);
  }

  /** One request's changes start: commitd's own savepoint, which no change can name (the guard refuses transaction statements). */
  async savepoint(): Promise<void> {
    await this.#run(`SAVEPOINT ${REQUEST_SAVEPOINT}`);
  }

  /**
   * A request failed: back to its savepoint, and the transaction goes on as before it. When
   * the server rolled back the whole transaction (the savepoint is gone, or no transaction is
   * open any more), the transaction is reported lost, to be reopened and rebuilt.
   */
  async rollbackToSavepoint(): Promise<void> {
    if (this.#lost !== undefined) throw this.#lostError();
    const conn = this.#conn;
    if (!conn) throw new Error(`mysql store ${this.#db.name}: the session holds no connection (not begun, or already finished)`);
    let result: unknown;
    try {
      [result] = await conn.query(`ROLLBACK TO SAVEPOINT ${REQUEST_SAVEPOINT}`);
    } catch (err) {
      if (isConnectionFailure(err)) {
        this.#lost ??= err;
        throw this.#lostError();
      }
      // No such savepoint (1305), or an XA branch the server marked rollback-only: the transaction is gone.
      this.#lost ??= new TransactionEnded(`the server rolled back the session's transaction (${errnoOf(err) ?? '?'}: ${errorMessage(err)})`);
      throw this.#lostError();
    }
    if (!inTransaction(result)) {
      this.#lost ??= new TransactionEnded("the server rolled back the session's transaction");
      throw this.#lostError();
    }
    this.#rejected = undefined;
  }

  async releaseSavepoint(): Promise<void> {
    await this.#run(`RELEASE SAVEPOINT ${REQUEST_SAVEPOINT}`);
  }

  async apply(change: MysqlChange): Promise<void> {
    const conn = this.#usableConnection();
    // Before anything is sent: a refused change leaves the transaction as it was.
    checkChange(change.sql, this.#db.sqlMode);
    let result: unknown;
    try {
      [result] = await this.#db.withDeadline(conn, () => conn.execute(change.sql, [...(change.params ?? [])]));
    } catch (err) {
      throw this.#failure(err, 'apply');
    }
    this.#checkStillInTransaction(result);
  }

  async prepare(key: Uint8Array, id: Uint8Array): Promise<void> {
    await this.#db.ensureMarkerTable();
    await this.#insertMarker(key, id);
    if (!this.#xid) return;
    await this.#run(`XA END ${this.#xid.sql}`);
    this.#prepareSent = true;
    try {
      await this.#run(`XA PREPARE ${this.#xid.sql}`);
    } catch (err) {
      // The server answered: nothing was prepared (a failed XA PREPARE rolls the branch back).
      // Without an answer it may have been: rollback ends it from another connection.
      if (this.#lost === undefined) this.#prepareSent = false;
      else this.#state = 'prepared';
      throw err;
    }
    this.#state = 'prepared';
  }

  async commit(key: Uint8Array, id: Uint8Array): Promise<void> {
    if (!this.#markerWritten) await this.prepare(key, id);
    this.#commitAttempted = true;
    if (this.#xa && this.#xid) return this.#commitXa(this.#xa, key, id, this.#xid);
    try {
      await this.#run('COMMIT');
      this.#state = 'none';
    } catch (err) {
      if (err instanceof StoreUnavailableError) {
        throw new StoreUnavailableError(`${err.message} — during COMMIT, so whether it committed is unknown; recovery finds the marker if it did`, err.detail);
      }
      throw err;
    } finally {
      this.#releaseConnection();
    }
  }

  async rollback(): Promise<void> {
    try {
      await this.#rollbackOnConnection();
    } finally {
      this.#releaseConnection();
    }
    // The session's own connection could not end a prepared transaction that never reached
    // its commit: end it from another one (the server detached it when the connection died).
    if (this.#xa && this.#xid && this.#prepareSent && !this.#commitAttempted && this.#state === 'prepared') {
      await this.#xa.rollbackPrepared(this.#xid);
    }
    this.#resetState();
  }

  /** Ends the transaction on the session's connection, where it still can; a failure leaves the connection to be destroyed. */
  async #rollbackOnConnection(): Promise<void> {
    const conn = this.#conn;
    if (!conn || this.#lost !== undefined || this.#state === 'none') return;
    const xid = this.#xid;
    try {
      if (!xid) {
        await conn.query('ROLLBACK');
      } else if (this.#state === 'open') {
        // XA END fails when the branch already ended (a failed XA PREPARE): XA ROLLBACK still applies.
        await conn.query(`XA END ${xid.sql}`).catch(() => undefined);
        await conn.query(`XA ROLLBACK ${xid.sql}`);
      } else if (this.#commitAttempted) {
        // Past the commit point the prepared transaction is the adopter's: detach it by dropping the connection.
        this.#lost ??= new Error('prepared transaction left to recovery');
        return;
      } else {
        await conn.query(`XA ROLLBACK ${xid.sql}`);
      }
      this.#state = 'none';
    } catch (err) {
      // Dropping the connection rolls back an open transaction and detaches a prepared one.
      this.#lost ??= err;
    }
  }

  async #commitXa(xa: XaTransactions, key: Uint8Array, id: Uint8Array, xid: Xid): Promise<void> {
    try {
      if (this.#conn && this.#lost === undefined) {
        try {
          await this.#run(`XA COMMIT ${xid.sql}`);
          this.#state = 'none';
          return;
        } catch (err) {
          if (!(err instanceof StoreUnavailableError)) throw err;
          // The connection died: the server detached the prepared transaction; finish it from another.
        }
      }
      this.#releaseConnection();
      if (await xa.commitPrepared(xid)) {
        this.#state = 'none';
        return;
      }
      // Gone: an adopter or orphan resolution finished it. The marker tells whether it committed.
      const stored = await this.#db.readMarker(key);
      if (stored && sameKey(stored, id)) return;
      if (stored) throw new MarkerExistsError(key, stored);
      throw new Error(
        `mysql store ${this.#db.name}: the prepared XA transaction of key ${JSON.stringify(describeKey(key))} was rolled back by someone else; nothing was committed`,
      );
    } finally {
      this.#releaseConnection();
    }
  }

  /** Inserts the marker; a duplicate key means another session committed the key first. */
  async #insertMarker(key: Uint8Array, id: Uint8Array): Promise<void> {
    const conn = this.#usableConnection();
    let result: unknown;
    try {
      [result] = await this.#db.withDeadline(conn, () =>
        conn.execute('INSERT INTO commitd_sessions (`key`, session_id) VALUES (?, ?)', [Buffer.from(key), toHex(id)]),
      );
    } catch (err) {
      if (errnoOf(err) !== ER_DUP_ENTRY) throw this.#failure(err, 'prepare');
      this.#rejected = { errno: ER_DUP_ENTRY, message: errorMessage(err) };
      // The conflicting row is committed (the insert waited for it), so another connection sees it.
      const stored = await this.#db.readMarker(key);
      if (!stored) throw this.#failure(err, 'prepare');
      throw new MarkerExistsError(key, stored);
    }
    this.#checkStillInTransaction(result);
    this.#markerWritten = true;
  }

  /**
   * The guard should make this unreachable; if a statement ever ended the transaction
   * anyway, later changes must not run (and autocommit) outside it.
   */
  #checkStillInTransaction(result: unknown): void {
    if (inTransaction(result)) return;
    this.#committedHalfway = true;
    this.#lost ??= new Error('a statement ended the session transaction');
    throw new ChangeRejectedError('the change ended the session transaction', { reason: 'statement' });
  }

  /** Runs one of commitd's own statements on the session's connection. */
  async #run(sql: string): Promise<void> {
    const conn = this.#usableConnection();
    try {
      await conn.query(sql);
    } catch (err) {
      throw this.#failure(err, sql.split(' ').slice(0, 2).join(' ').toLowerCase());
    }
  }

  /** The session's connection, or the reason the session cannot go on. */
  #usableConnection(): mysql.PoolConnection {
    if (this.#lost !== undefined) throw this.#lostError();
    if (this.#rejected) {
      throw new ChangeRejectedError(
        `the session's transaction was ended by an earlier rejected change (${this.#rejected.errno ?? '?'}: ${this.#rejected.message}); cancel the session`,
        { cause: { ...this.#rejected } },
      );
    }
    if (!this.#conn) throw new Error(`mysql store ${this.#db.name}: the session holds no connection (not begun, or already finished)`);
    return this.#conn;
  }

  /** Classifies a failed statement: a lost connection, a passing failure, or a rejected change. */
  #failure(err: unknown, step: string): unknown {
    if (err instanceof CommitdError) {
      // A statement past its limit: the transaction is no longer what the session applied.
      if (err.code === 'CHANGE_REJECTED') this.#rejected ??= { errno: errnoOf(err), message: err.message };
      return err;
    }
    if (isConnectionFailure(err)) {
      this.#lost ??= err;
      return this.#lostError();
    }
    const e = asMysqlError(err);
    this.#rejected = { errno: e.errno, message: e.message };
    if (isTransient(err)) {
      return new StoreUnavailableError(
        `mysql store ${this.#db.name}: ${step} failed for a passing reason (${e.errno}: ${e.message}); ${step === 'apply' ? 'retry the request' : 'retry the session'}`,
        {
          errno: e.errno,
          sqlstate: e.sqlState,
        },
      );
    }
    return new ChangeRejectedError(`mysql rejected the change: ${e.message}`, { errno: e.errno, sqlstate: e.sqlState, message: e.message }, { cause: err });
  }

  #lostError(): StoreUnavailableError {
    const errno = errnoOf(this.#lost);
    const reason = this.#db.redact(errorMessage(this.#lost)) + (errno ? ` [${errno}]` : '');
    // Once XA PREPARE (or COMMIT) was sent the work may outlive the connection, and a statement
    // that committed half-way left its part in the store: neither can be rebuilt by re-applying.
    const reopenable = !this.#prepareSent && !this.#commitAttempted && !this.#committedHalfway;
    const what =
      this.#lost instanceof TransactionEnded ? `: ${reason}` : ` lost the session's connection (${reason}); the server rolled back its open transaction`;
    return new StoreUnavailableError(
      `mysql store ${this.#db.name}${what}` +
        (reopenable ? "; commitd opens a new one and applies the session's changes again — retry the request" : ' — retry the session'),
      { errno },
      { connectionLost: reopenable },
    );
  }

  /** Returns the connection to the pool when its transaction ended cleanly, else destroys it. */
  #releaseConnection(): void {
    const conn = this.#conn;
    if (!conn) return;
    this.#conn = undefined;
    conn.removeListener('error', this.#onConnectionError);
    if (this.#lost !== undefined || this.#state !== 'none') conn.destroy();
    else conn.release();
  }

  #resetState(): void {
    this.#releaseConnection();
    this.#lost = undefined;
    this.#rejected = undefined;
    this.#state = 'none';
    this.#markerWritten = false;
    this.#xid = undefined;
    this.#prepareSent = false;
    this.#commitAttempted = false;
    this.#committedHalfway = false;
  }
}

/** True when a statement's OK packet says a transaction is still open on the connection (or says nothing). */
function inTransaction(result: unknown): boolean {
  const status = (result as { serverStatus?: unknown } | undefined)?.serverStatus;
  return typeof status !== 'number' || (status & SERVER_STATUS_IN_TRANS) !== 0;
}

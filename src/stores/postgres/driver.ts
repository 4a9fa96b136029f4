/**
 * A session on a `postgres` store: one pooled connection and one transaction, held from
 * `begin` to commit or rollback; changes run at once, the marker row goes in at prepare
 * (then `PREPARE TRANSACTION` in two-phase mode), and every failure is sorted into a lost
 * connection, a passing failure or a rejected change.
 * @module
 */
import type pg from 'pg';
import { CommitdError, errorMessage } from '../../errors/core.ts';
import { sameKey, toHex } from '../../core/keys.ts';
import { ChangeRejectedError, MarkerExistsError, StatementTimeoutError, StoreUnavailableError } from '../errors.ts';
import type { StoreDriver } from '../helper.ts';
import type { PostgresDatabase } from './database.ts';
import { checkChange } from './guard.ts';
import { extendedQuery, isConnectionFailure, isTransientSqlstate, markerKeyText, QUERY_CANCELED, sqlstateOf, type PostgresChange } from './statements.ts';
import { IN_FLIGHT_LOCK, IN_FLIGHT_UNLOCK, inFlightLockParams, PreparedTransactionPendingError, TWO_PHASE_MAX_KEY_BYTES, type TwoPhase } from './two-phase.ts';

/** The savepoint a request's changes run under (one request at a time per session). */
const REQUEST_SAVEPOINT = 'commitd_request';

/** The earlier statement failure that aborted a session's transaction. */
interface Rejection {
  readonly sqlstate: string;
  readonly message: string;
}

/** One session's driver: one connection and one transaction, held from `open` to commit or rollback. */
export class PostgresDriver implements StoreDriver<PostgresChange> {
  readonly #db: PostgresDatabase;
  /** Set in two-phase mode. */
  readonly #twoPhase: TwoPhase | undefined;
  /** Set by the session while `beginRecovery` runs: a prepared transaction found then is committed, not refused. */
  recovering = false;
  #client: pg.PoolClient | undefined;
  /** Why the connection is gone; once set, every step fails and the client is destroyed. */
  #lost: unknown;
  /** The failure that aborted the transaction; once set, every step fails. */
  #rejected: Rejection | undefined;
  #markerWritten = false;
  /** Two-phase: the gid, and whether PREPARE TRANSACTION was sent (it may have succeeded even if the reply was lost). */
  #gid: string | undefined;
  #prepareSent = false;
  /** Two-phase: this session's connection holds the gid's in-flight lock. */
  #inFlightLock = false;
  /** Past `commit`, a cancel must leave a prepared transaction to the adopter, not roll it back. */
  #commitAttempted = false;

  constructor(db: PostgresDatabase) {
    this.#db = db;
    this.#twoPhase = db.twoPhase;
  }

  /** Attached while the session holds its client: pg emits 'error' on it when the connection dies. */
  readonly #onClientError = (err: Error): void => {
    this.#lost ??= err;
  };

  async findMarker(key: Uint8Array): Promise<Uint8Array | undefined> {
    await this.#db.ensureMarkerTable();
    const stored = await this.#db.readMarker(key);
    const twoPhase = this.#twoPhase;
    if (stored || !twoPhase || key.length > TWO_PHASE_MAX_KEY_BYTES) return stored;
    const gid = twoPhase.gid(key);
    if (!(await twoPhase.isPrepared(gid))) return undefined;
    if (!this.recovering) throw new PreparedTransactionPendingError(this.#db.name, key, gid);
    // The adopter's path: the earlier session prepared its changes; commit them instead of
    // re-applying. If someone else finished the transaction first, the marker tells how.
    await twoPhase.commitPrepared(gid);
    return this.#db.readMarker(key);
  }

  async open(key: Uint8Array): Promise<void> {
    this.#resetState();
    this.#gid = this.#twoPhase?.gid(key);
    const client = await this.#db.connect();
    client.on('error', this.#onClientError);
    this.#client = client;
    // Two-phase: the in-flight lock (two-phase.ts), held by this connection until the prepared
    // transaction is finished. Not taken: another session of the key holds it, which covers the gid too.
    if (this.#gid) this.#inFlightLock = (await this.#run(IN_FLIGHT_LOCK, inFlightLockParams(this.#gid))).rows[0]?.locked === true;
    await this.#run('BEGIN');
  }

  /** After a lost connection (`connectionLost`): a new connection and transaction, as `open` made; the helper re-applies the changes. */
  async reopen(key: Uint8Array): Promise<void> {
    await this.open(key);
  }

  /** One request's changes start: commitd's own savepoint, which no change can name (the guard refuses transaction statements). */
  async savepoint(): Promise<void> {
    await this.#run(`SAVEPOINT ${REQUEST_SAVEPOINT}`);
  }

  /** A request failed: back to its savepoint; the transaction goes on as before it. */
  async rollbackToSavepoint(): Promise<void> {
    if (this.#lost !== undefined) throw this.#lostError();
    const client = this.#usableClientEvenIfAborted();
    try {
      await client.query(`ROLLBACK TO SAVEPOINT ${REQUEST_SAVEPOINT}`);
    } catch (err) {
      throw this.#failure(err, 'rollback to savepoint');
    }
    this.#rejected = undefined;
  }

  async releaseSavepoint(): Promise<void> {
    await this.#run(`RELEASE SAVEPOINT ${REQUEST_SAVEPOINT}`);
  }

  async apply(change: PostgresChange): Promise<void> {
    const client = this.#usableClient();
    // Before anything is sent: a refused change leaves the transaction as it was.
    await checkChange(change.sql);
    try {
      await client.query(extendedQuery(change));
    } catch (err) {
      throw this.#failure(err, 'apply');
    }
    // The guard should make this unreachable; if a statement ever ended the transaction
    // anyway, later changes must not run outside it.
    if (client.getTransactionStatus() !== 'T') {
      this.#lost ??= new Error('a change ended the transaction');
      throw new ChangeRejectedError('the change ended the session transaction', { reason: 'statement' });
    }
  }

  async prepare(key: Uint8Array, id: Uint8Array): Promise<void> {
    await this.#db.ensureMarkerTable();
    // Deferred constraints fail now, before the commit point, not at COMMIT after it.
    await this.#run('SET CONSTRAINTS ALL IMMEDIATE');
    await this.#insertMarker(key, id);
    if (!this.#gid) return;
    this.#prepareSent = true;
    try {
      await this.#run(`PREPARE TRANSACTION '${this.#gid}'`);
    } catch (err) {
      // The server answered: nothing was prepared, and the gid may be someone else's.
      if (this.#lost === undefined) this.#prepareSent = false;
      throw err;
    }
    // The prepared transaction no longer needs the connection; its in-flight lock does, so
    // the connection is kept (idle, outside any transaction) until commit or rollback.
  }

  async commit(key: Uint8Array, id: Uint8Array): Promise<void> {
    if (!this.#markerWritten) await this.prepare(key, id);
    this.#commitAttempted = true;
    if (this.#twoPhase && this.#gid) {
      try {
        return await this.#commitPrepared(this.#twoPhase, key, id, this.#gid);
      } finally {
        this.#releaseClient();
      }
    }
    let result: pg.QueryResult;
    try {
      result = await this.#run('COMMIT');
    } catch (err) {
      if (err instanceof StoreUnavailableError) {
        throw new StoreUnavailableError(`${err.message} — during COMMIT, so whether it committed is unknown; recovery finds the marker if it did`, err.detail);
      }
      throw err;
    } finally {
      this.#releaseClient();
    }
    // COMMIT of an aborted transaction answers ROLLBACK instead of failing.
    if (result.command !== 'COMMIT') throw new Error(`postgres store ${this.#db.name}: COMMIT answered ${result.command}; nothing was committed`);
  }

  async rollback(): Promise<void> {
    try {
      // Straight on the client: #run would refuse an aborted transaction, which is what ROLLBACK ends.
      if (this.#client && this.#lost === undefined && this.#client.getTransactionStatus() !== 'I') await this.#client.query('ROLLBACK').catch(() => undefined);
      // Before the in-flight lock goes with the connection.
      if (this.#twoPhase && this.#gid && this.#prepareSent && !this.#commitAttempted) await this.#twoPhase.rollbackPrepared(this.#gid);
    } finally {
      this.#releaseClient();
    }
    this.#resetState();
  }

  async #commitPrepared(twoPhase: TwoPhase, key: Uint8Array, id: Uint8Array, gid: string): Promise<void> {
    if (await twoPhase.commitPrepared(gid)) return;
    // Gone: an adopter or resolveOrphans finished it. The marker tells whether it committed.
    const stored = await this.#db.readMarker(key);
    if (stored && sameKey(stored, id)) return;
    if (stored) throw new MarkerExistsError(key, stored);
    throw new Error(`postgres store ${this.#db.name}: prepared transaction ${gid} was rolled back by someone else; nothing was committed`);
  }

  /** Inserts the marker; a unique violation means another session committed the key first. */
  async #insertMarker(key: Uint8Array, id: Uint8Array): Promise<void> {
    const client = this.#usableClient();
    try {
      await client.query('INSERT INTO commitd_sessions (key, session_id) VALUES ($1, $2)', [markerKeyText(key), toHex(id)]);
      this.#markerWritten = true;
    } catch (err) {
      if (sqlstateOf(err) !== '23505') throw this.#failure(err, 'prepare');
      this.#rejected = { sqlstate: '23505', message: errorMessage(err) };
      // The conflicting row is committed (the insert waited for it), so another connection sees it.
      const stored = await this.#db.readMarker(key);
      if (!stored) throw this.#failure(err, 'prepare');
      throw new MarkerExistsError(key, stored);
    }
  }

  /** Runs one of commitd's own statements on the session's connection. */
  async #run(sql: string, params?: unknown[]): Promise<pg.QueryResult> {
    const client = this.#usableClient();
    try {
      return await client.query(sql, params);
    } catch (err) {
      throw this.#failure(err, sql.split(' ')[0]?.toLowerCase() ?? 'query');
    }
  }

  /** The session's client, or the reason the session cannot go on. */
  #usableClient(): pg.PoolClient {
    if (this.#lost !== undefined) throw this.#lostError();
    if (this.#rejected) {
      throw new ChangeRejectedError(
        `the session's transaction was aborted by an earlier rejected change (${this.#rejected.sqlstate}: ${this.#rejected.message}); cancel the session`,
        { sqlstate: '25P02', message: 'current transaction is aborted', cause: { ...this.#rejected } },
      );
    }
    return this.#usableClientEvenIfAborted();
  }

  /** The session's client, even inside a transaction an earlier change aborted. */
  #usableClientEvenIfAborted(): pg.PoolClient {
    if (!this.#client) throw new Error(`postgres store ${this.#db.name}: the session holds no connection (not begun, or already finished)`);
    return this.#client;
  }

  /** Classifies a failed statement: a lost connection, a passing failure, or a rejected change. */
  #failure(err: unknown, step: string): unknown {
    if (err instanceof CommitdError) return err;
    if (isConnectionFailure(err)) {
      this.#lost ??= err;
      return this.#lostError();
    }
    const dbError = err as pg.DatabaseError;
    const sqlstate = dbError.code ?? '';
    this.#rejected = { sqlstate, message: dbError.message };
    if (sqlstate === QUERY_CANCELED) return new StatementTimeoutError(this.#db.statementTimeoutMs, { sqlstate }, { cause: err });
    if (isTransientSqlstate(sqlstate)) {
      return new StoreUnavailableError(
        `postgres store ${this.#db.name}: ${step} failed for a passing reason (${sqlstate}: ${dbError.message}); retry the session`,
        { sqlstate },
      );
    }
    return new ChangeRejectedError(`postgres rejected the change: ${dbError.message}`, { sqlstate, message: dbError.message }, { cause: err });
  }

  #lostError(): StoreUnavailableError {
    const sqlstate = sqlstateOf(this.#lost);
    const reason = this.#db.redact(errorMessage(this.#lost)) + (sqlstate ? ` [${sqlstate}]` : '');
    // Once PREPARE TRANSACTION was sent the work may outlive the connection: not reopenable.
    const reopenable = !this.#prepareSent && !this.#commitAttempted;
    return new StoreUnavailableError(
      `postgres store ${this.#db.name} lost the session's connection (${reason}); the server rolled back its open transaction` +
        (reopenable ? "; commitd opens a new one and applies the session's changes again — retry the request" : ' — retry the session'),
      { sqlstate },
      { connectionLost: reopenable },
    );
  }

  /** Returns the client to the pool, or destroys it when its connection is broken. */
  #releaseClient(): void {
    const client = this.#client;
    if (!client) return;
    this.#client = undefined;
    client.removeListener('error', this.#onClientError);
    const broken = this.#lost !== undefined || client.getTransactionStatus() !== 'I';
    const gid = this.#gid;
    if (broken || !this.#inFlightLock || !gid) {
      this.#db.release(client, broken ? new Error('session connection not reusable') : undefined);
    } else {
      // Back to the pool once the lock is released; a connection that cannot release it is closed (which does).
      client.query(IN_FLIGHT_UNLOCK, inFlightLockParams(gid)).then(
        () => this.#db.release(client),
        (err: Error) => this.#db.release(client, err),
      );
    }
    this.#inFlightLock = false;
  }

  #resetState(): void {
    this.#releaseClient();
    this.#lost = undefined;
    this.#rejected = undefined;
    this.#markerWritten = false;
    this.#gid = undefined;
    this.#prepareSent = false;
    this.#commitAttempted = false;
  }
}

/**
 * The `postgres` store type. A session holds one pooled connection and one transaction from
 * `begin` to `commit`; changes (`{sql, params?}`) run at once, so a rejected statement fails
 * its apply. At prepare the marker row goes into `commitd_sessions` in the same transaction.
 *
 * A frozen commitd must not hold row locks forever: the server ends a transaction left idle
 * longer than `idleInTransactionTimeoutMs`, and every statement is bounded by
 * `statementTimeoutMs` (server side) plus a margin (client side, for a server that stopped
 * answering).
 *
 * Two-phase mode (`twoPhase: true`) ends prepare with `PREPARE TRANSACTION`: the prepared
 * work outlives the connection, this process and a server restart, and whoever adopts the
 * session commits it (`COMMIT PREPARED`) instead of re-applying the changes.
 *
 * - gid: `commitd:<tag>:<hex of the key bytes>`, where `<tag>` is 8 hex digits of a hash of
 *   the database and schema holding the marker table. Gids are unique per PostgreSQL
 *   *cluster*, so two stores on one server (different databases) must not share them; the
 *   hex key decodes back for `resolveOrphans`. Gids are limited to 199 bytes, so keys of
 *   more than {@link TWO_PHASE_MAX_KEY_BYTES} bytes cannot use two-phase mode (`begin` fails).
 * - Adoption: `beginRecovery` on a key with no marker but a prepared transaction commits
 *   that transaction and enters skip mode. `begin` (a fresh session) on such a key fails with
 *   `PreparedTransactionPendingError` until `resolveOrphans` decided its fate.
 *
 * Limits: one store per marker table (a database, or a schema chosen by `search_path`):
 * two stores sharing `commitd_sessions` would see each other's markers. Markers are kept
 * forever (one small row per session), so a key stays committed after the coordinator's
 * results expired. `poolSize` bounds the sessions open at once on this store, and must be at
 * least 2: a conflicting marker is read on a second connection.
 * @module
 */
import { createHash } from 'node:crypto';
import { Type } from '@sinclair/typebox';
import pg from 'pg';
import { CommitdError, errorMessage } from '../../errors/core.ts';
import { describeKey, fromHex, sameKey, toHex } from '../../core/keys.ts';
import { ChangeRejectedError, HelperCommittable, MarkerExistsError, StoreUnavailableError, type StoreDriver } from '../helper.ts';
import type { OrphanDecision, Store, StoreContext, StoreType } from '../api.ts';

/** Options of a `postgres` store. */
export interface PostgresOptions {
  /** A libpq-style URL, e.g. `postgres://user:secret@host:5432/db`. Never logged or reported. */
  readonly connectionString: string;
  /** Connections in the pool (default 10, at least 2): each open session holds one. */
  readonly poolSize?: number;
  /** Server-side limit of every statement, in ms (default 30000). */
  readonly statementTimeoutMs?: number;
  /** How long the server lets a session's transaction sit idle before ending it, in ms (default 60000). */
  readonly idleInTransactionTimeoutMs?: number;
  /** Prepare with `PREPARE TRANSACTION` (default false); needs `max_prepared_transactions > 0`. */
  readonly twoPhase?: boolean;
}

/** One change: a single SQL statement with positional parameters (`$1`, `$2`, …). */
export interface PostgresChange {
  readonly sql: string;
  readonly params?: readonly unknown[];
}

/** Keys longer than this (in bytes) cannot be committed in two-phase mode: their gid would not fit. */
export const TWO_PHASE_MAX_KEY_BYTES = 91;

const DEFAULT_POOL_SIZE = 10;
const DEFAULT_STATEMENT_TIMEOUT_MS = 30_000;
const DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT_MS = 60_000;
const CONNECT_TIMEOUT_MS = 10_000;
/** Client-side slack over `statementTimeoutMs`: only a server that stopped answering reaches it. */
const QUERY_TIMEOUT_MARGIN_MS = 5_000;
const GID_PREFIX = 'commitd:';

const optionsSchema = Type.Object(
  {
    connectionString: Type.String({ minLength: 1 }),
    poolSize: Type.Optional(Type.Integer({ minimum: 2 })),
    statementTimeoutMs: Type.Optional(Type.Integer({ minimum: 1 })),
    idleInTransactionTimeoutMs: Type.Optional(Type.Integer({ minimum: 1 })),
    twoPhase: Type.Optional(Type.Boolean()),
  },
  { additionalProperties: false },
);

const changeSchema = Type.Object(
  {
    sql: Type.String({ minLength: 1 }),
    params: Type.Optional(Type.Array(Type.Unknown())),
  },
  { additionalProperties: false },
);

/** Two-phase mode was asked for where it cannot work (server settings, or a key too long for a gid). */
export class TwoPhaseUnsupportedError extends CommitdError {
  constructor(message: string) {
    super('INVALID_REQUEST', message);
  }
}

/** A fresh session found an unresolved prepared transaction for its key (two-phase mode). */
export class PreparedTransactionPendingError extends CommitdError {
  constructor(storeName: string, key: Uint8Array, gid: string) {
    super(
      'SESSION_BUSY',
      `${storeName} holds prepared transaction ${gid} for key ${JSON.stringify(describeKey(key))} from an earlier session; ` +
        'it must be committed or rolled back (resolveOrphans) before the key can begin again',
    );
  }
}

/**
 * Statements a change may start with: those that read or write data, DDL (transactional in
 * PostgreSQL), and `SET LOCAL` / `SET CONSTRAINTS` (scoped to the transaction). Everything
 * else — BEGIN, COMMIT, ROLLBACK, SAVEPOINT, PREPARE TRANSACTION, a session-level SET, … —
 * would end or escape the transaction commitd runs, or leak into the pooled connection.
 */
const ALLOWED_VERBS = new Set([
  'SELECT', 'VALUES', 'WITH', 'TABLE', 'INSERT', 'UPDATE', 'DELETE', 'MERGE',
  'CREATE', 'DROP', 'ALTER', 'TRUNCATE', 'COMMENT', 'GRANT', 'REVOKE', 'LOCK', 'CALL', 'DO', 'NOTIFY', 'REFRESH',
]);

/** SQLSTATEs worth a retry: the same statement may well succeed on another attempt. */
function isTransientSqlstate(sqlstate: string): boolean {
  return (
    sqlstate.startsWith('40') || // serialization failure, deadlock
    sqlstate.startsWith('53') || // insufficient resources
    sqlstate === '55P03' || // lock not available
    sqlstate === '57014' // statement timeout (often a lock wait)
  );
}

/** True when `err` means the connection is gone (or unusable), not that a statement failed. */
function isConnectionFailure(err: unknown): boolean {
  if (!(err instanceof pg.DatabaseError)) return true;
  const sqlstate = err.code ?? '';
  return err.severity === 'FATAL' || err.severity === 'PANIC' || sqlstate.startsWith('08') || sqlstate.startsWith('57P');
}

function sqlstateOf(err: unknown): string | undefined {
  return err instanceof pg.DatabaseError ? err.code : undefined;
}

/** The first two words of a statement, past whitespace and comments, upper-cased. */
function leadingWords(sql: string): [string, string] {
  const rest = sql.replace(/^(?:\s+|--[^\n]*(?:\n|$)|\/\*[\s\S]*?(?:\*\/|$))*/, '');
  const match = /^([A-Za-z]+)(?:\s+([A-Za-z]+))?/.exec(rest);
  return [match?.[1]?.toUpperCase() ?? '', match?.[2]?.toUpperCase() ?? ''];
}

/** The verb of a statement a change may not run, or undefined when it may. */
function refusedVerb(sql: string): string | undefined {
  const [verb, next] = leadingWords(sql);
  if (ALLOWED_VERBS.has(verb)) return undefined;
  if (verb === 'SET' && (next === 'LOCAL' || next === 'CONSTRAINTS')) return undefined;
  return verb || 'this';
}

/**
 * The marker row's key: the key's text, as the sqlite store writes it; `0x` + hex for keys
 * that are not UTF-8 (what `describeKey` shows) or that hold a NUL, which TEXT cannot store.
 */
function markerKeyText(key: Uint8Array): string {
  const text = describeKey(key);
  return text.includes('\0') ? `0x${toHex(key)}` : text;
}

/** A query that must use the extended protocol: one statement only, so `SELECT 1; COMMIT` cannot pass. */
interface ExtendedQuery extends pg.QueryConfig<unknown[]> {
  readonly queryMode: 'extended';
}

function extendedQuery(change: PostgresChange): ExtendedQuery {
  return { text: change.sql, values: [...(change.params ?? [])], queryMode: 'extended' };
}

/** What two-phase mode needs to know about where its marker table lives. */
interface TwoPhaseScope {
  /** `commitd:<tag>:`: the prefix of every gid of this marker table. */
  readonly gidPrefix: string;
}

/** The long-lived part of a store: its pool, the marker table, and prepared transactions. */
class PostgresDatabase {
  readonly name: string;
  readonly pool: pg.Pool;
  readonly #connectionString: string;
  #twoPhase: TwoPhaseScope | undefined;
  #markerTable: Promise<void> | undefined;

  private constructor(name: string, pool: pg.Pool, connectionString: string) {
    this.name = name;
    this.pool = pool;
    this.#connectionString = connectionString;
  }

  static async open(options: PostgresOptions, ctx: StoreContext): Promise<PostgresDatabase> {
    const statementTimeoutMs = options.statementTimeoutMs ?? DEFAULT_STATEMENT_TIMEOUT_MS;
    const pool = new pg.Pool({
      connectionString: options.connectionString,
      max: options.poolSize ?? DEFAULT_POOL_SIZE,
      connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
      statement_timeout: statementTimeoutMs,
      idle_in_transaction_session_timeout: options.idleInTransactionTimeoutMs ?? DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT_MS,
      query_timeout: statementTimeoutMs + QUERY_TIMEOUT_MARGIN_MS,
      keepAlive: true,
      application_name: `commitd/${ctx.name}`,
    });
    const db = new PostgresDatabase(ctx.name, pool, options.connectionString);
    // An idle pooled connection that dies emits 'error' on the pool; unhandled, it would kill the process.
    pool.on('error', (err) => ctx.logger.warn({ error: db.redact(err.message) }, 'idle postgres connection failed; the pool replaces it'));
    if (!options.twoPhase) return db;
    try {
      db.#twoPhase = await db.#twoPhaseScope();
      return db;
    } catch (err) {
      await pool.end();
      throw err;
    }
  }

  /** Set in two-phase mode: where this store's prepared transactions are found. */
  get twoPhase(): TwoPhaseScope | undefined {
    return this.#twoPhase;
  }

  /** Checks that the server allows prepared transactions and derives this marker table's gid prefix. */
  async #twoPhaseScope(): Promise<TwoPhaseScope> {
    const { rows } = await this.query<{ max: number; db: string; schema: string | null }>(
      "SELECT current_setting('max_prepared_transactions')::int AS max, current_database() AS db, current_schema() AS schema",
    );
    const row = rows[0];
    if (!row || row.max <= 0) {
      throw new TwoPhaseUnsupportedError(
        `postgres store ${this.name} has twoPhase set, but the server has max_prepared_transactions = ${row?.max ?? 0}: ` +
          'set it above 0 (needs a server restart) or turn twoPhase off',
      );
    }
    if (row.schema === null) throw new Error(`postgres store ${this.name}: no schema of the search_path exists to hold commitd_sessions`);
    const tag = createHash('sha256').update(`${row.db}\0${row.schema}`).digest('hex').slice(0, 8);
    return { gidPrefix: `${GID_PREFIX}${tag}:` };
  }

  /** A message with the connection string cut out, safe to log and to return. */
  redact(message: string): string {
    return message.split(this.#connectionString).join('<connection string>');
  }

  /** Wraps a failure to reach the server; statement errors pass through. */
  unavailable(err: unknown, doing: string): unknown {
    if (err instanceof CommitdError || !isConnectionFailure(err)) return err;
    return new StoreUnavailableError(`postgres store ${this.name} is unavailable (${doing}): ${this.redact(errorMessage(err))}`, { sqlstate: sqlstateOf(err) });
  }

  /** Runs one statement on any pooled connection (autocommit). */
  async query<R extends pg.QueryResultRow>(sql: string, params?: unknown[]): Promise<pg.QueryResult<R>> {
    try {
      return await this.pool.query<R>(sql, params);
    } catch (err) {
      throw this.unavailable(err, 'query');
    }
  }

  /** A connection of its own, for one session. */
  async connect(): Promise<pg.PoolClient> {
    try {
      return await this.pool.connect();
    } catch (err) {
      throw this.unavailable(err, 'connect');
    }
  }

  /** Creates the marker table once per store; concurrent creators (other instances) are fine. */
  ensureMarkerTable(): Promise<void> {
    this.#markerTable ??= this.#createMarkerTable().catch((err: unknown) => {
      this.#markerTable = undefined;
      throw err;
    });
    return this.#markerTable;
  }

  async #createMarkerTable(): Promise<void> {
    try {
      await this.query(
        'CREATE TABLE IF NOT EXISTS commitd_sessions (key TEXT PRIMARY KEY, session_id TEXT NOT NULL, committed_at TIMESTAMPTZ NOT NULL DEFAULT now())',
      );
    } catch (err) {
      // IF NOT EXISTS is not atomic: a concurrent creator makes ours fail on the catalog's unique index.
      if (sqlstateOf(err) !== '23505' && sqlstateOf(err) !== '42P07') throw err;
    }
  }

  /** The committed marker's session ID for `key`, if any. */
  async readMarker(key: Uint8Array): Promise<Uint8Array | undefined> {
    const { rows } = await this.query<{ session_id: string }>('SELECT session_id FROM commitd_sessions WHERE key = $1', [markerKeyText(key)]);
    return rows[0] && fromHex(rows[0].session_id);
  }

  /** The gid of `key`'s prepared transaction (two-phase mode). */
  gid(key: Uint8Array): string {
    const scope = this.#requireTwoPhase();
    if (key.length > TWO_PHASE_MAX_KEY_BYTES) {
      throw new TwoPhaseUnsupportedError(
        `postgres store ${this.name} runs in two-phase mode, which takes keys of at most ${TWO_PHASE_MAX_KEY_BYTES} bytes; ` +
          `key ${JSON.stringify(describeKey(key))} has ${key.length}`,
      );
    }
    return scope.gidPrefix + toHex(key);
  }

  /** The key a gid of this marker table was derived from; undefined for anyone else's gid. */
  keyOfGid(gid: string): Uint8Array | undefined {
    const { gidPrefix } = this.#requireTwoPhase();
    const hex = gid.startsWith(gidPrefix) ? gid.slice(gidPrefix.length) : '';
    return /^(?:[0-9a-f]{2})+$/.test(hex) ? fromHex(hex) : undefined;
  }

  /** Gids of this marker table's prepared transactions, oldest first. */
  async listPrepared(): Promise<string[]> {
    const { gidPrefix } = this.#requireTwoPhase();
    const { rows } = await this.query<{ gid: string }>(
      'SELECT gid FROM pg_prepared_xacts WHERE database = current_database() AND starts_with(gid, $1) ORDER BY prepared',
      [gidPrefix],
    );
    return rows.map((row) => row.gid);
  }

  async isPrepared(gid: string): Promise<boolean> {
    const { rows } = await this.query('SELECT 1 FROM pg_prepared_xacts WHERE gid = $1 AND database = current_database()', [gid]);
    return rows.length > 0;
  }

  /** `COMMIT PREPARED`; false when no such transaction exists (already finished by someone). */
  commitPrepared(gid: string): Promise<boolean> {
    return this.#finishPrepared('COMMIT', gid);
  }

  /** `ROLLBACK PREPARED`; false when no such transaction exists (already finished by someone). */
  rollbackPrepared(gid: string): Promise<boolean> {
    return this.#finishPrepared('ROLLBACK', gid);
  }

  async #finishPrepared(verb: 'COMMIT' | 'ROLLBACK', gid: string): Promise<boolean> {
    try {
      // A gid is `commitd:` and hex digits only (see `gid`), so it is safe inside the literal.
      await this.query(`${verb} PREPARED '${gid}'`);
      return true;
    } catch (err) {
      if (sqlstateOf(err) === '42704') return false;
      throw err;
    }
  }

  #requireTwoPhase(): TwoPhaseScope {
    if (!this.#twoPhase) throw new Error(`postgres store ${this.name} does not run in two-phase mode`);
    return this.#twoPhase;
  }

  async close(): Promise<void> {
    await this.pool.end();
  }
}

/** The earlier statement failure that aborted a session's transaction. */
interface Rejection {
  readonly sqlstate: string;
  readonly message: string;
}

/** One session's driver: one connection and one transaction, held from `open` to commit or rollback. */
class PostgresDriver implements StoreDriver<PostgresChange> {
  readonly #db: PostgresDatabase;
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
  /** Past `commit`, a cancel must leave a prepared transaction to the adopter, not roll it back. */
  #commitAttempted = false;

  constructor(db: PostgresDatabase) {
    this.#db = db;
  }

  /** Attached while the session holds its client: pg emits 'error' on it when the connection dies. */
  readonly #onClientError = (err: Error): void => {
    this.#lost ??= err;
  };

  async findMarker(key: Uint8Array): Promise<Uint8Array | undefined> {
    await this.#db.ensureMarkerTable();
    const stored = await this.#db.readMarker(key);
    if (stored || !this.#db.twoPhase || key.length > TWO_PHASE_MAX_KEY_BYTES) return stored;
    const gid = this.#db.gid(key);
    if (!(await this.#db.isPrepared(gid))) return undefined;
    if (!this.recovering) throw new PreparedTransactionPendingError(this.#db.name, key, gid);
    // The adopter's path: the earlier session prepared its changes; commit them instead of
    // re-applying. If someone else finished the transaction first, the marker tells how.
    await this.#db.commitPrepared(gid);
    return this.#db.readMarker(key);
  }

  async open(key: Uint8Array): Promise<void> {
    this.#resetState();
    this.#gid = this.#db.twoPhase ? this.#db.gid(key) : undefined;
    const client = await this.#db.connect();
    client.on('error', this.#onClientError);
    this.#client = client;
    await this.#run('BEGIN');
  }

  async apply(change: PostgresChange): Promise<void> {
    const client = this.#usableClient();
    const verb = refusedVerb(change.sql);
    if (verb) {
      throw new ChangeRejectedError(`${verb} statements are not allowed: commitd runs the session's transaction`, { reason: 'statement', verb });
    }
    try {
      await client.query(extendedQuery(change));
    } catch (err) {
      throw this.#failure(err, 'apply');
    }
    // The verb check should make this unreachable; if a statement ever ended the transaction
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
    // The prepared transaction no longer needs the connection.
    this.#releaseClient();
  }

  async commit(key: Uint8Array, id: Uint8Array): Promise<void> {
    if (!this.#markerWritten) await this.prepare(key, id);
    this.#commitAttempted = true;
    if (this.#gid) return this.#commitPrepared(key, id, this.#gid);
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
      if (this.#client && this.#lost === undefined) await this.#client.query('ROLLBACK').catch(() => undefined);
    } finally {
      this.#releaseClient();
    }
    if (this.#gid && this.#prepareSent && !this.#commitAttempted) await this.#db.rollbackPrepared(this.#gid);
    this.#resetState();
  }

  async #commitPrepared(key: Uint8Array, id: Uint8Array, gid: string): Promise<void> {
    if (await this.#db.commitPrepared(gid)) return;
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
  async #run(sql: string): Promise<pg.QueryResult> {
    const client = this.#usableClient();
    try {
      return await client.query(sql);
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
    if (isTransientSqlstate(sqlstate)) {
      return new StoreUnavailableError(`postgres store ${this.#db.name}: ${step} failed for a passing reason (${sqlstate}: ${dbError.message}); retry the session`, { sqlstate });
    }
    return new ChangeRejectedError(`postgres rejected the change: ${dbError.message}`, { sqlstate, message: dbError.message }, { cause: err });
  }

  #lostError(): StoreUnavailableError {
    const sqlstate = sqlstateOf(this.#lost);
    const reason = this.#db.redact(errorMessage(this.#lost)) + (sqlstate ? ` [${sqlstate}]` : '');
    return new StoreUnavailableError(
      `postgres store ${this.#db.name} lost the session's connection (${reason}); the server rolled back its open transaction — retry the session`,
      { sqlstate },
    );
  }

  /** Returns the client to the pool, or destroys it when its connection is broken. */
  #releaseClient(): void {
    const client = this.#client;
    if (!client) return;
    this.#client = undefined;
    client.removeListener('error', this.#onClientError);
    const broken = this.#lost !== undefined || client.getTransactionStatus() !== 'I';
    client.release(broken ? new Error('session connection not reusable') : undefined);
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

/** A session on a postgres store: tells the driver whether it begins afresh or recovers. */
class PostgresSession extends HelperCommittable<PostgresChange> {
  readonly #driver: PostgresDriver;

  constructor(name: string, driver: PostgresDriver) {
    super(name, driver);
    this.#driver = driver;
  }

  override async begin(key: Uint8Array): Promise<void> {
    this.#driver.recovering = false;
    await super.begin(key);
  }

  override async beginRecovery(key: Uint8Array): Promise<void> {
    this.#driver.recovering = true;
    try {
      await super.beginRecovery(key);
    } finally {
      this.#driver.recovering = false;
    }
  }
}

/**
 * Commits or rolls back the prepared transactions of this marker table, as `decide` says
 * for each key; `keep` leaves one alone. Tries every one, then throws the first failure.
 */
async function resolveOrphans(db: PostgresDatabase, ctx: StoreContext, decide: OrphanDecision): Promise<void> {
  const failures: unknown[] = [];
  for (const gid of await db.listPrepared()) {
    const key = db.keyOfGid(gid);
    if (!key) continue;
    try {
      const decision = await decide(key);
      if (decision === 'commit') await db.commitPrepared(gid);
      else if (decision === 'rollback') await db.rollbackPrepared(gid);
      if (decision !== 'keep') ctx.logger.info({ key: describeKey(key), gid, decision }, 'resolved a prepared transaction');
    } catch (err) {
      ctx.logger.warn({ key: describeKey(key), gid, error: errorMessage(err) }, 'could not resolve a prepared transaction');
      failures.push(err);
    }
  }
  if (failures.length === 1) throw failures[0];
  if (failures.length > 1) throw new AggregateError(failures, `postgres store ${db.name}: ${failures.length} prepared transactions could not be resolved`);
}

/** The built-in `postgres` store type. */
export const postgresStoreType: StoreType<PostgresOptions, PostgresChange> = {
  type: 'postgres',
  optionsSchema,
  changeSchema,
  async create(options: PostgresOptions, ctx: StoreContext): Promise<Store<PostgresChange>> {
    const db = await PostgresDatabase.open(options, ctx);
    return {
      name: ctx.name,
      type: 'postgres',
      session: () => new PostgresSession(ctx.name, new PostgresDriver(db)),
      ...(db.twoPhase ? { resolveOrphans: (decide: OrphanDecision) => resolveOrphans(db, ctx, decide) } : {}),
      close: () => db.close(),
    };
  },
};

/**
 * The database behind a `postgres` store: its pool, with every statement bounded in time,
 * the marker table, and what makes a failure a passing unavailability with the connection
 * string kept out of every message.
 * @module
 */
import pg from 'pg';
import { CommitdError, errorMessage } from '../../errors/core.ts';
import { fromHex } from '../../core/keys.ts';
import type { StoreContext } from '../api.ts';
import { StoreUnavailableError } from '../errors.ts';
import { statementTimeoutMs } from '../limits.ts';
import { isConnectionFailure, markerKeyText, sqlstateOf } from './statements.ts';
import { TwoPhase } from './two-phase.ts';

/** Options of a `postgres` store. */
export interface PostgresOptions {
  /** A libpq-style URL, e.g. `postgres://user:secret@host:5432/db`. Never logged or reported. */
  readonly connectionString: string;
  /** Connections in the pool (default 10, at least 2): each open session holds one. */
  readonly poolSize?: number;
  /** Server-side limit of every statement: seconds, or a duration such as "5s" (default 5 s). */
  readonly statementTimeout?: number | string;
  /** The same limit in ms, the older spelling; `statementTimeout` wins when both are set. */
  readonly statementTimeoutMs?: number;
  /** How long the server lets a session's transaction sit idle before ending it, in ms (default 60000). */
  readonly idleInTransactionTimeoutMs?: number;
  /** Prepare with `PREPARE TRANSACTION` (default false); needs `max_prepared_transactions > 0`. */
  readonly twoPhase?: boolean;
}

const DEFAULT_POOL_SIZE = 10;
const DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT_MS = 60_000;
const CONNECT_TIMEOUT_MS = 10_000;
/** Client-side slack over the statement timeout: only a server that stopped answering reaches it. */
const QUERY_TIMEOUT_MARGIN_MS = 5_000;

/** The long-lived part of a store: its pool, the marker table, and (two-phase) its prepared transactions. */
export class PostgresDatabase {
  readonly name: string;
  readonly pool: pg.Pool;
  /** The server-side limit of every statement (a worker cannot lift it: `guard.ts` refuses SET and set_config). */
  readonly statementTimeoutMs: number;
  readonly #connectionString: string;
  #twoPhase: TwoPhase | undefined;
  #markerTable: Promise<void> | undefined;
  /** Connections handed out by `connect` and not released yet. */
  readonly #held = new Set<pg.PoolClient>();

  private constructor(name: string, pool: pg.Pool, statementTimeoutMs: number, connectionString: string) {
    this.name = name;
    this.pool = pool;
    this.statementTimeoutMs = statementTimeoutMs;
    this.#connectionString = connectionString;
  }

  static async open(options: PostgresOptions, ctx: StoreContext): Promise<PostgresDatabase> {
    const timeoutMs =
      options.statementTimeout === undefined && options.statementTimeoutMs !== undefined
        ? options.statementTimeoutMs
        : statementTimeoutMs(options.statementTimeout);
    const pool = new pg.Pool({
      connectionString: options.connectionString,
      max: options.poolSize ?? DEFAULT_POOL_SIZE,
      connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
      statement_timeout: timeoutMs,
      idle_in_transaction_session_timeout: options.idleInTransactionTimeoutMs ?? DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT_MS,
      query_timeout: timeoutMs + QUERY_TIMEOUT_MARGIN_MS,
      keepAlive: true,
      application_name: `commitd/${ctx.name}`,
    });
    const db = new PostgresDatabase(ctx.name, pool, timeoutMs, options.connectionString);
    // An idle pooled connection that dies emits 'error' on the pool; unhandled, it would kill the process.
    // The error is logged as a StoreUnavailableError whose message has the connection string redacted.
    pool.on('error', (err) =>
      ctx.logger.warn({ err: new StoreUnavailableError(db.redact(err.message)) }, 'idle postgres connection failed; the pool replaces it'),
    );
    if (!options.twoPhase) return db;
    try {
      db.#twoPhase = await TwoPhase.open(db);
      return db;
    } catch (err) {
      await pool.end();
      throw err;
    }
  }

  /** Set in two-phase mode: where this store's prepared transactions are found. */
  get twoPhase(): TwoPhase | undefined {
    return this.#twoPhase;
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

  /** A connection of its own, for one session (hand it back with {@link release}). */
  async connect(): Promise<pg.PoolClient> {
    let client: pg.PoolClient;
    try {
      client = await this.pool.connect();
    } catch (err) {
      throw this.unavailable(err, 'connect');
    }
    this.#held.add(client);
    return client;
  }

  /** Back to the pool, or closed with `err` (pg destroys a client released with an error). */
  release(client: pg.PoolClient, err?: Error): void {
    if (!this.#held.delete(client)) return;
    client.release(err);
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

  async close(): Promise<void> {
    // A session still holding its connection (two-phase: kept past PREPARE TRANSACTION for
    // its in-flight lock) is abandoned as a crash would abandon it; the pool would wait for it.
    for (const client of [...this.#held]) this.release(client, new Error(`postgres store ${this.name} is closing`));
    await this.pool.end();
  }
}

/**
 * The database behind a `mysql` store: its pool, what the server is (its `sql_mode`, for the
 * guard), the marker table, the deadline every statement of a session runs under (a timer
 * that sends `KILL QUERY` on a connection of its own), and what makes a failure a passing
 * unavailability with the credentials kept out of every message.
 * @module
 */
import { createHash } from 'node:crypto';
import mysql from 'mysql2/promise';
import { CommitdError, errorMessage } from '../../errors/core.ts';
import { fromHex } from '../../core/keys.ts';
import type { StoreContext } from '../api.ts';
import { StatementTimeoutError, StoreUnavailableError } from '../errors.ts';
import { statementTimeoutMs } from '../limits.ts';
import { sqlModeFlags, type SqlModeFlags } from './guard.ts';
import { errnoOf, isConnectionFailure, isServerTimeout, ER_QUERY_INTERRUPTED } from './statements.ts';

/** Options of a `mysql` store: a URL, or its parts. */
export interface MysqlOptions {
  /** `mysql://user:secret@host:3306/db`. Never logged or reported. */
  readonly connectionString?: string;
  readonly host?: string;
  readonly port?: number;
  readonly user?: string;
  /** Never logged or reported. */
  readonly password?: string;
  /** The database that holds the worker's tables and `commitd_sessions`; required (here or in the URL). */
  readonly database?: string;
  /** Prepare with `XA PREPARE` (default false): prepared work outlives the connection and commitd. */
  readonly xa?: boolean;
  /** Limit of every statement: seconds, or a duration such as "5s" (default 5 s). */
  readonly statementTimeout?: number | string;
  /** Connections in the pool (default 10, at least 2): each open session holds one. */
  readonly poolSize?: number;
}

const DEFAULT_POOL_SIZE = 10;
const CONNECT_TIMEOUT_MS = 10_000;
/** The server closes a session connection idle this long (a frozen commitd), rolling back its open transaction. */
export const IDLE_SESSION_TIMEOUT_SECONDS = 60;
/** Past the limit plus this, a statement whose KILL QUERY did not end it loses its connection. */
const HARD_DEADLINE_MARGIN_MS = 5_000;
/** Longest marker key, in bytes (the column is VARBINARY of this length). */
export const MARKER_KEY_MAX_BYTES = 512;

/** A statement's deadline ran out: the server was told to stop it. */
class DeadlinePassed extends Error {}

/** The long-lived part of a store: its pool, the server's quoting rules and the marker table. */
export class MysqlDatabase {
  readonly name: string;
  readonly pool: mysql.Pool;
  readonly statementTimeoutMs: number;
  /** How the server reads quotes and escapes, for the guard. */
  readonly sqlMode: SqlModeFlags;
  /** The database holding `commitd_sessions`. */
  readonly database: string;
  readonly #config: mysql.PoolOptions;
  readonly #secrets: readonly string[];
  #markerTable: Promise<void> | undefined;

  private constructor(name: string, pool: mysql.Pool, config: mysql.PoolOptions, timeoutMs: number, sqlMode: string, database: string, secrets: string[]) {
    this.name = name;
    this.pool = pool;
    this.#config = config;
    this.statementTimeoutMs = timeoutMs;
    this.sqlMode = sqlModeFlags(sqlMode);
    this.database = database;
    this.#secrets = secrets;
  }

  /** Opens the pool and reads what the server is; fails (and closes the pool) when it cannot be reached or has no database. */
  static async open(options: MysqlOptions, ctx: StoreContext): Promise<MysqlDatabase> {
    const config: mysql.PoolOptions = {
      ...(options.connectionString ? { uri: options.connectionString } : {}),
      ...(options.host !== undefined ? { host: options.host } : {}),
      ...(options.port !== undefined ? { port: options.port } : {}),
      ...(options.user !== undefined ? { user: options.user } : {}),
      ...(options.password !== undefined ? { password: options.password } : {}),
      ...(options.database !== undefined ? { database: options.database } : {}),
      connectionLimit: options.poolSize ?? DEFAULT_POOL_SIZE,
      // One statement per change, and never a file read by the client for the server.
      multipleStatements: false,
      connectTimeout: CONNECT_TIMEOUT_MS,
      enableKeepAlive: true,
      // Connections idle in the pool close before the server's idle limit closes them.
      maxIdle: 0,
      idleTimeout: (IDLE_SESSION_TIMEOUT_SECONDS * 1000) / 4,
      maxPreparedStatements: 64,
      charset: 'utf8mb4',
    };
    const secrets = [options.connectionString, options.password].filter((s): s is string => typeof s === 'string' && s.length > 0);
    const pool = mysql.createPool(config);
    const redact = (message: string) => secrets.reduce((text, secret) => text.split(secret).join('<secret>'), message);
    try {
      const [rows] = await pool.query<mysql.RowDataPacket[]>('SELECT DATABASE() AS db, @@SESSION.sql_mode AS mode');
      const row = rows[0] as { db: string | null; mode: string } | undefined;
      if (!row?.db) {
        throw new MysqlOptionsError(`mysql store ${ctx.name} has no database: set options.database, or name one in the connection string`);
      }
      if (/(?:^|,)ORACLE(?:,|$)/i.test(row.mode)) {
        throw new MysqlOptionsError(`mysql store ${ctx.name}: the server's sql_mode holds ORACLE, whose SQL syntax commitd's guard does not read`);
      }
      const timeoutMs = statementTimeoutMs(options.statementTimeout);
      return new MysqlDatabase(ctx.name, pool, config, timeoutMs, row.mode, row.db, secrets);
    } catch (err) {
      await pool.end().catch(() => undefined);
      if (err instanceof CommitdError) throw err;
      throw new StoreUnavailableError(`mysql store ${ctx.name} is unavailable (open): ${redact(errorMessage(err))}`, { errno: errnoOf(err) });
    }
  }

  /** A message with the connection string and password cut out, safe to log and to return. */
  redact(message: string): string {
    return this.#secrets.reduce((text, secret) => text.split(secret).join('<secret>'), message);
  }

  /** Wraps a failure to reach the server; statement errors pass through. */
  unavailable(err: unknown, doing: string): unknown {
    if (err instanceof CommitdError || !isConnectionFailure(err)) return err;
    return new StoreUnavailableError(`mysql store ${this.name} is unavailable (${doing}): ${this.redact(errorMessage(err))}`, { errno: errnoOf(err) });
  }

  /** Runs one of commitd's statements on any pooled connection (autocommit). */
  async query<R extends mysql.RowDataPacket[] | mysql.ResultSetHeader>(sql: string, params?: unknown[]): Promise<R> {
    try {
      const [result] = await this.pool.query<R>(sql, params);
      return result;
    } catch (err) {
      throw this.unavailable(err, 'query');
    }
  }

  /** A connection of its own, for one session: nothing left of an earlier session, the server's idle limit and READ COMMITTED set. */
  async connect(): Promise<mysql.PoolConnection> {
    let conn: mysql.PoolConnection | undefined;
    try {
      conn = await this.pool.getConnection();
      // COM_RESET_CONNECTION: user variables, temporary tables, session settings of the last session are gone.
      await conn.reset();
      await conn.query(`SET SESSION wait_timeout = ${IDLE_SESSION_TIMEOUT_SECONDS}`);
      // As PostgreSQL's default: no gap locks, so sessions on distinct rows do not wait on each other.
      await conn.query('SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED');
      return conn;
    } catch (err) {
      conn?.destroy();
      throw this.unavailable(err, 'connect');
    }
  }

  /**
   * Runs `statement` on `conn` under the store's limit: past it the server is told to stop the
   * statement (`KILL QUERY`, from a connection of its own), and the step fails with
   * `StatementTimeoutError` even if the statement then finished (MySQL's interrupted
   * `SLEEP` does); past it plus a margin the connection is destroyed.
   */
  async withDeadline<T>(conn: mysql.PoolConnection, statement: () => Promise<T>): Promise<T> {
    let killing: Promise<void> | undefined;
    const soft = setTimeout(() => {
      killing = this.#killQuery(conn.threadId);
    }, this.statementTimeoutMs);
    const hard = setTimeout(() => conn.destroy(), this.statementTimeoutMs + HARD_DEADLINE_MARGIN_MS);
    let outcome: { ok: true; value: T } | { ok: false; err: unknown };
    try {
      outcome = { ok: true, value: await statement() };
    } catch (err) {
      outcome = { ok: false, err };
    } finally {
      clearTimeout(soft);
      clearTimeout(hard);
    }
    if (killing) {
      // The kill must have landed before the connection runs anything else.
      await killing;
      const cause = outcome.ok ? new DeadlinePassed('deadline passed') : outcome.err;
      if (outcome.ok || !isConnectionFailure(outcome.err) || errnoOf(outcome.err) === ER_QUERY_INTERRUPTED) {
        throw new StatementTimeoutError(this.statementTimeoutMs, { errno: ER_QUERY_INTERRUPTED }, { cause });
      }
    }
    if (!outcome.ok) {
      if (isServerTimeout(outcome.err)) throw new StatementTimeoutError(this.statementTimeoutMs, { errno: errnoOf(outcome.err) }, { cause: outcome.err });
      throw outcome.err;
    }
    return outcome.value;
  }

  async #killQuery(threadId: number): Promise<void> {
    let killer: mysql.Connection | undefined;
    try {
      const { connectionLimit: _limit, maxIdle: _maxIdle, idleTimeout: _idle, ...config } = this.#config;
      killer = await mysql.createConnection(config);
      await killer.query(`KILL QUERY ${Number(threadId)}`);
    } catch {
      // The hard deadline ends the statement if the kill could not be sent.
    } finally {
      await killer?.end().catch(() => killer?.destroy());
    }
  }

  /** Creates the marker table once per store; concurrent creators (other instances) are fine. */
  ensureMarkerTable(): Promise<void> {
    this.#markerTable ??= this.query(
      'CREATE TABLE IF NOT EXISTS commitd_sessions (' +
        `\`key\` VARBINARY(${MARKER_KEY_MAX_BYTES}) NOT NULL PRIMARY KEY, ` +
        'session_id VARCHAR(128) NOT NULL, ' +
        'committed_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)' +
        ') ENGINE=InnoDB',
    ).then(
      () => undefined,
      (err: unknown) => {
        this.#markerTable = undefined;
        throw err;
      },
    );
    return this.#markerTable;
  }

  /** The committed marker's session ID for `key`, if any. */
  async readMarker(key: Uint8Array): Promise<Uint8Array | undefined> {
    const rows = await this.query<mysql.RowDataPacket[]>('SELECT session_id FROM commitd_sessions WHERE `key` = ?', [Buffer.from(key)]);
    const row = rows[0] as { session_id: string } | undefined;
    return row && fromHex(row.session_id);
  }

  /** 8 hex digits naming this store's database on its server: part of every xid (xids are server-wide). */
  get tag(): string {
    return createHash('sha256').update(this.database).digest('hex').slice(0, 8);
  }

  async close(): Promise<void> {
    await this.pool.end();
  }
}

/** Options that cannot work with the server (no database, an unsupported sql_mode, XA refused): `400` at registration. */
export class MysqlOptionsError extends CommitdError {
  constructor(message: string) {
    super('INVALID_REQUEST', message);
  }
}

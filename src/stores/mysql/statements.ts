/**
 * The changes of a `mysql` store as statements: their shape, and which server and client
 * errors mean a lost connection, a passing failure or a timeout rather than a rejected change.
 * @module
 */

/** One change: a single SQL statement with positional `?` parameters (scalars only). */
export interface MysqlChange {
  readonly sql: string;
  readonly params?: readonly (string | number | boolean | null)[];
}

/** What mysql2 puts on its errors: the server's errno and SQLSTATE, or a client-side code. */
export interface MysqlError {
  readonly message: string;
  readonly errno?: number;
  readonly code?: string;
  readonly sqlState?: string;
  readonly fatal?: boolean;
}

export function asMysqlError(err: unknown): MysqlError {
  if (typeof err === 'object' && err !== null && 'message' in err) return err as MysqlError;
  return { message: String(err) };
}

/** Errnos of a statement the server stopped: `max_statement_time` (MariaDB), `MAX_EXECUTION_TIME` (MySQL), KILL QUERY. */
export const ER_STATEMENT_TIMEOUT = 1969;
export const ER_QUERY_TIMEOUT = 3024;
export const ER_QUERY_INTERRUPTED = 1317;
export const ER_DUP_ENTRY = 1062;
export const ER_XAER_NOTA = 1397;

/** Errnos of passing conditions: a retry of the session may well succeed. */
const TRANSIENT_ERRNOS = new Set([
  1205, // lock wait timeout
  1213, // deadlock
  1040, // too many connections
  1203, // max_user_connections
  1637, // too many active concurrent transactions
  1613, // XA_RBTIMEOUT
  1614, // XA_RBDEADLOCK
  1402, // XA_RBROLLBACK
  1290, // --read-only (a failover in progress)
  1792, // read-only transaction
]);

/** Errnos the server sends when the connection itself ends. */
const CONNECTION_ERRNOS = new Set([
  1053, // server shutdown in progress
  1927, // connection killed
  2006, // server has gone away
  2013, // lost connection during query
  4031, // disconnected by the server for inactivity
]);

/** True when `err` means the connection is gone (or unusable), not that a statement failed. */
export function isConnectionFailure(err: unknown): boolean {
  const e = asMysqlError(err);
  if (e.fatal) return true;
  if (e.errno !== undefined && CONNECTION_ERRNOS.has(e.errno)) return true;
  // No errno from the server: a socket error, a protocol timeout, a closed connection.
  return e.errno === undefined || e.sqlState === undefined;
}

/** True for failures worth a retry: the same statement may well succeed on another attempt. */
export function isTransient(err: unknown): boolean {
  const errno = asMysqlError(err).errno;
  return errno !== undefined && TRANSIENT_ERRNOS.has(errno);
}

export function isServerTimeout(err: unknown): boolean {
  const errno = asMysqlError(err).errno;
  return errno === ER_STATEMENT_TIMEOUT || errno === ER_QUERY_TIMEOUT;
}

export function errnoOf(err: unknown): number | undefined {
  return asMysqlError(err).errno;
}

/** Server status bit of an OK packet: a transaction is open on the connection. */
export const SERVER_STATUS_IN_TRANS = 1;

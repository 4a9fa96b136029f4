/**
 * The changes of a `postgres` store as statements: how one is sent (one statement only;
 * which statements a change may run is `guard.ts`'s), which server errors mean a lost
 * connection, a passing failure or a timeout rather than a rejected change, and the marker
 * row's key.
 * @module
 */
import pg from 'pg';
import { describeKey, toHex } from '../../core/keys.ts';

/** One change: a single SQL statement with positional parameters (`$1`, `$2`, …). */
export interface PostgresChange {
  readonly sql: string;
  readonly params?: readonly unknown[];
}

/** SQLSTATE of a statement the server cancelled: past `statement_timeout`, the only canceller commitd uses. */
export const QUERY_CANCELED = '57014';

/** SQLSTATEs worth a retry: the same statement may well succeed on another attempt. */
export function isTransientSqlstate(sqlstate: string): boolean {
  return (
    sqlstate.startsWith('40') || // serialization failure, deadlock
    sqlstate.startsWith('53') || // insufficient resources
    sqlstate === '55P03' // lock not available
  );
}

/** True when `err` means the connection is gone (or unusable), not that a statement failed. */
export function isConnectionFailure(err: unknown): boolean {
  if (!(err instanceof pg.DatabaseError)) return true;
  const sqlstate = err.code ?? '';
  return err.severity === 'FATAL' || err.severity === 'PANIC' || sqlstate.startsWith('08') || sqlstate.startsWith('57P');
}

export function sqlstateOf(err: unknown): string | undefined {
  return err instanceof pg.DatabaseError ? err.code : undefined;
}

/**
 * The marker row's key: the key's text, as the sqlite store writes it; `0x` + hex for keys
 * that are not UTF-8 (what `describeKey` shows) or that hold a NUL, which TEXT cannot store.
 */
export function markerKeyText(key: Uint8Array): string {
  const text = describeKey(key);
  return text.includes('\0') ? `0x${toHex(key)}` : text;
}

/** A query that must use the extended protocol: one statement only, so `SELECT 1; COMMIT` cannot pass. */
interface ExtendedQuery extends pg.QueryConfig<unknown[]> {
  readonly queryMode: 'extended';
}

export function extendedQuery(change: PostgresChange): ExtendedQuery {
  return { text: change.sql, values: [...(change.params ?? [])], queryMode: 'extended' };
}

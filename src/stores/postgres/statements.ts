/**
 * The changes of a `postgres` store as statements: which statements a change may run, how
 * it is sent (one statement only), which server errors mean a lost connection or a passing
 * failure rather than a rejected change, and the marker row's key.
 * @module
 */
import pg from 'pg';
import { describeKey, toHex } from '../../core/keys.ts';

/** One change: a single SQL statement with positional parameters (`$1`, `$2`, …). */
export interface PostgresChange {
  readonly sql: string;
  readonly params?: readonly unknown[];
}

/**
 * Statements a change may start with: those that read or write data, DDL (transactional in
 * PostgreSQL), and `SET LOCAL` / `SET CONSTRAINTS` (scoped to the transaction). Everything
 * else — BEGIN, COMMIT, ROLLBACK, SAVEPOINT, PREPARE TRANSACTION, a session-level SET, … —
 * would end or escape the transaction commitd runs, or leak into the pooled connection.
 */
const ALLOWED_VERBS = new Set([
  'SELECT',
  'VALUES',
  'WITH',
  'TABLE',
  'INSERT',
  'UPDATE',
  'DELETE',
  'MERGE',
  'CREATE',
  'DROP',
  'ALTER',
  'TRUNCATE',
  'COMMENT',
  'GRANT',
  'REVOKE',
  'LOCK',
  'CALL',
  'DO',
  'NOTIFY',
  'REFRESH',
]);

/** SQLSTATEs worth a retry: the same statement may well succeed on another attempt. */
export function isTransientSqlstate(sqlstate: string): boolean {
  return (
    sqlstate.startsWith('40') || // serialization failure, deadlock
    sqlstate.startsWith('53') || // insufficient resources
    sqlstate === '55P03' || // lock not available
    sqlstate === '57014' // statement timeout (often a lock wait)
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

/** The first two words of a statement, past whitespace and comments, upper-cased. */
function leadingWords(sql: string): [string, string] {
  const rest = sql.replace(/^(?:\s+|--[^\n]*(?:\n|$)|\/\*[\s\S]*?(?:\*\/|$))*/, '');
  const match = /^([A-Za-z]+)(?:\s+([A-Za-z]+))?/.exec(rest);
  return [match?.[1]?.toUpperCase() ?? '', match?.[2]?.toUpperCase() ?? ''];
}

/** The verb of a statement a change may not run, or undefined when it may. */
export function refusedVerb(sql: string): string | undefined {
  const [verb, next] = leadingWords(sql);
  if (ALLOWED_VERBS.has(verb)) return undefined;
  if (verb === 'SET' && (next === 'LOCAL' || next === 'CONSTRAINTS')) return undefined;
  return verb || 'this';
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

/**
 * The benchmark's unit of work, shared by the floor and the HTTP client so both do the
 * same thing: one one-shot session inserting one row into each of two sqlite stores.
 * @module
 */
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import Database from 'better-sqlite3';

/** The two stores every session writes, in commit (name) order. */
export const STORE_NAMES = ['a', 'b'] as const;

/** The table each change inserts into; created in every store file before a run. */
export const TABLE_DDL = 'CREATE TABLE IF NOT EXISTS bench_rows (k TEXT PRIMARY KEY, v TEXT NOT NULL)';
export const INSERT_SQL = 'INSERT INTO bench_rows (k, v) VALUES (?, ?)';
/** The marker table of commitd's sqlite store type (DESIGN.md "Store types"). */
export const MARKER_DDL = 'CREATE TABLE IF NOT EXISTS commitd_sessions (key TEXT PRIMARY KEY, session_id TEXT NOT NULL, committed_at TEXT NOT NULL)';

/** One change of the sqlite store type. */
export interface SqliteChange {
  readonly sql: string;
  readonly params: [string, string];
}

/** A printable payload of `bytes` characters (the same every call: content does not matter). */
export function payloadOf(bytes: number): string {
  const alphabet = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789';
  let text = '';
  for (let i = 0; i < bytes; i++) text += alphabet[(i * 7919) % alphabet.length];
  return text;
}

/** The change a session applies to each store: one row keyed by the session's key. */
export function changeFor(key: string, payload: string): SqliteChange {
  return { sql: INSERT_SQL, params: [key, payload] };
}

/** The body of `POST /v1/commits` for one session. */
export function oneShotBody(key: string, payload: string): { key: string; changes: Record<string, SqliteChange[]> } {
  const change = changeFor(key, payload);
  return { key, changes: Object.fromEntries(STORE_NAMES.map((name) => [name, [change]])) };
}

/**
 * Distinct idempotency keys: `<run>-<cell>-<n>`, within the HTTP key alphabet. Each cell
 * gets its own prefix so no two sessions of a run share a key.
 */
export function keyOf(run: string, cell: string, n: number): string {
  return `${run}-${cell}-${n}`;
}

/** Creates a store file with the bench table (and the marker table, as the store would). */
export function createStoreFile(path: string): void {
  mkdirSync(dirname(path), { recursive: true });
  const db = new Database(path);
  try {
    db.pragma('journal_mode = WAL');
    db.exec(TABLE_DDL);
    db.exec(MARKER_DDL);
  } finally {
    db.close();
  }
}

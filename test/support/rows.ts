/**
 * A store's rows as seen from outside commitd: what a sqlite file or a PostgreSQL server
 * holds, and the set-up or "another writer" statements tests run beside commitd.
 */
import Database from 'better-sqlite3';
import pg from 'pg';

/** Rows `sql` returns from the sqlite file at `path`, opened read-only. */
export function sqliteRows<T>(path: string, sql: string, ...params: unknown[]): T[] {
  const db = new Database(path, { readonly: true });
  try {
    return db.prepare(sql).all(...params) as T[];
  } finally {
    db.close();
  }
}

/** Rows of table `t` with column `k` = `key` in the sqlite file at `path`. */
export function countRows(path: string, key: string): number {
  return sqliteRows<{ n: number }>(path, 'SELECT count(*) AS n FROM t WHERE k = ?', key)[0].n;
}

/** The `id` column of `table` in the sqlite file at `path`, in order. */
export function ids(path: string, table = 't'): number[] {
  return sqliteRows<{ id: number }>(path, `SELECT id FROM ${table} ORDER BY id`).map((row) => row.id);
}

/** Runs one statement on the sqlite file at `path` (created if missing): a table's set-up, or another writer. */
export function sqliteRun(path: string, sql: string, ...params: unknown[]): void {
  const db = new Database(path);
  try {
    db.prepare(sql).run(...params);
  } finally {
    db.close();
  }
}

/** Runs `sql` on PostgreSQL at `connectionString`, on a connection of its own; resolves with the rows. */
export async function postgresRows<T extends pg.QueryResultRow>(connectionString: string, sql: string, params: readonly unknown[] = []): Promise<T[]> {
  const client = new pg.Client({ connectionString });
  await client.connect();
  try {
    return (await client.query<T>(sql, [...params])).rows;
  } finally {
    await client.end();
  }
}

/** Reading what a sqlite store committed, straight from its file. */
import Database from 'better-sqlite3';

/** Rows of table `t` with column `k` = `key` in the sqlite file at `path`. */
export function countRows(path: string, key: string): number {
  const db = new Database(path, { readonly: true });
  try {
    return (db.prepare('SELECT count(*) AS n FROM t WHERE k = ?').get(key) as { n: number }).n;
  } finally {
    db.close();
  }
}

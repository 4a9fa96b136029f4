/** The store contract against the built-in `sqlite` store type, on a file in a temp directory. */
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { pino } from 'pino';
import { sqliteStoreType, type SqliteChange } from '../../src/stores/sqlite/store.ts';
import { makeTempDir, removeTempDir } from '../harness/child.ts';
import { countRows } from '../support/rows.ts';
import { storeContract } from './store-contract.ts';

storeContract<SqliteChange>({
  name: 'sqlite',
  unavailable: () => undefined,
  async start() {
    const dir = makeTempDir('contract-sqlite');
    const path = join(dir, 'store.db');
    // The table countRows reads: `k` names a sample's row.
    const db = new Database(path);
    db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT NOT NULL, v TEXT NOT NULL)');
    db.close();
    return {
      open: async () => sqliteStoreType.create({ path }, { name: 'contract', logger: pino({ level: 'silent' }), dataDir: dir, retentionSeconds: 60 }),
      changes: (tag) => [
        { sql: "INSERT INTO t (k, v) VALUES (?, 'inserted')", params: [tag] },
        { sql: "UPDATE t SET v = 'updated' WHERE k = @k", params: { k: tag } },
      ],
      applied: async (tag) => countRows(path, tag),
      rejected: (tag) => ({ sql: 'INSERT INTO nowhere (k) VALUES (?)', params: [tag] }),
      stop: () => removeTempDir(dir),
    };
  },
});

/**
 * The store contract against the built-in `mysql` store type on a throwaway MariaDB, once
 * per mode: one transaction per session, and XA (`XA PREPARE` at prepare).
 */
import { pino } from 'pino';
import { mysqlStoreType, type MysqlChange } from '../../src/stores/mysql/store.ts';
import { mariadbBinary, mariadbInstallDb, mysqlRows, startMariadb } from '../harness/mariadb.ts';
import { storeContract } from './store-contract.ts';

for (const xa of [false, true]) {
  storeContract<MysqlChange>({
    name: xa ? 'mysql (xa)' : 'mysql',
    unavailable: () => (mariadbBinary() && mariadbInstallDb() ? undefined : 'MariaDB server binaries not found (set MARIADBD_BIN or install mariadb-server)'),
    async start() {
      const server = await startMariadb();
      const url = await server.createDatabase(xa ? 'contract_xa' : 'contract');
      await mysqlRows(url, 'CREATE TABLE t (id INT AUTO_INCREMENT PRIMARY KEY, k VARCHAR(200) NOT NULL, v VARCHAR(20) NOT NULL, INDEX (k)) ENGINE=InnoDB');
      return {
        open: async () =>
          mysqlStoreType.create({ connectionString: url, xa }, { name: 'contract', logger: pino({ level: 'silent' }), dataDir: '.', retentionSeconds: 60 }),
        changes: (tag) => [
          { sql: "INSERT INTO t (k, v) VALUES (?, 'inserted')", params: [tag] },
          // By primary key: InnoDB's UPDATE … WHERE k = ? would wait on the row an abandoned
          // session of the same tag still holds uncommitted (the crash case), which MVCC lets PostgreSQL skip.
          { sql: "UPDATE t SET v = 'updated' WHERE id = LAST_INSERT_ID() AND k = ?", params: [tag] },
        ],
        applied: async (tag) => Number((await mysqlRows<{ n: number }>(url, 'SELECT count(*) AS n FROM t WHERE k = ?', [tag]))[0]?.n ?? 0),
        rejected: (tag) => ({ sql: 'INSERT INTO nowhere (k) VALUES (?)', params: [tag] }),
        stop: () => server.cleanup(),
      };
    },
  });
}

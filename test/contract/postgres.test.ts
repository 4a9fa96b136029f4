/**
 * The store contract against the built-in `postgres` store type, once per mode: one
 * transaction per session, and two-phase (`PREPARE TRANSACTION` at prepare).
 */
import pg from 'pg';
import { pino } from 'pino';
import { postgresStoreType, type PostgresChange } from '../../src/stores/postgres/store.ts';
import { postgresBinDir, startPostgres } from '../harness/postgres.ts';
import { storeContract } from './store-contract.ts';

for (const twoPhase of [false, true]) {
  storeContract<PostgresChange>({
    name: twoPhase ? 'postgres (two-phase)' : 'postgres',
    unavailable: () => (postgresBinDir() ? undefined : 'PostgreSQL server binaries not found (set PG_BINDIR or install postgresql)'),
    async start() {
      const server = await startPostgres({ twoPhase: true });
      // Another client of the database: it reads what the store committed, nothing in flight.
      const reader = new pg.Client({ connectionString: server.connectionString });
      await reader.connect();
      await reader.query('CREATE TABLE t (id SERIAL PRIMARY KEY, k TEXT NOT NULL, v TEXT NOT NULL)');
      return {
        open: async () =>
          postgresStoreType.create(
            { connectionString: server.connectionString, twoPhase },
            { name: 'contract', logger: pino({ level: 'silent' }), dataDir: '.', retentionSeconds: 60 },
          ),
        changes: (tag) => [
          { sql: "INSERT INTO t (k, v) VALUES ($1, 'inserted')", params: [tag] },
          { sql: "UPDATE t SET v = 'updated' WHERE k = $1", params: [tag] },
        ],
        applied: async (tag) => (await reader.query<{ n: number }>('SELECT count(*)::int AS n FROM t WHERE k = $1', [tag])).rows[0]?.n ?? 0,
        rejected: (tag) => ({ sql: 'INSERT INTO nowhere (k) VALUES ($1)', params: [tag] }),
        async stop() {
          await reader.end();
          await server.cleanup();
        },
      };
    },
  });
}

/**
 * The realistic workload: each one-shot session writes one row to a PostgreSQL store
 * (`orders`) and one key to a Redis store (`cache`), on throwaway servers of the test
 * harness with their durability on (PostgreSQL `fsync = on`, Redis AOF with `appendfsync
 * everysec`, Redis's default). The floor does the same I/O in this process: the marker
 * lookups, KV transaction 1, a PostgreSQL transaction (row + marker) and a Redis
 * `WATCH`/`MULTI`/`EXEC` (value + marker), KV transaction 2; each session on its own.
 * @module
 */
import { Redis } from 'ioredis';
import pg from 'pg';
import type { Kv } from '../src/kv/kv.ts';
import { startPostgres, type PostgresServer } from '../test/harness/postgres.ts';
import { startRedis, type RedisServer } from '../test/harness/redis.ts';

/** Store names in commit (name) order. */
export const SERVICE_STORES = ['cache', 'orders'] as const;
const TABLE_DDL = 'CREATE TABLE IF NOT EXISTS bench_orders (k TEXT PRIMARY KEY, v TEXT NOT NULL)';
const MARKER_DDL =
  'CREATE TABLE IF NOT EXISTS commitd_sessions (key TEXT PRIMARY KEY, session_id TEXT NOT NULL, committed_at TIMESTAMPTZ NOT NULL DEFAULT now())';
const INSERT_SQL = 'INSERT INTO bench_orders (k, v) VALUES ($1, $2)';
const STORE_ID = '0123456789abcdef0123456789abcdef';

/** The two servers, with a database for commitd and one for the floor. */
export interface Services {
  readonly postgres: PostgresServer;
  readonly redis: RedisServer;
  /** Connection string of commitd's database. */
  readonly commitdDatabase: string;
  readonly floorDatabase: string;
  stop(): Promise<void>;
}

export async function startServices(): Promise<Services> {
  const postgres = await startPostgres({ settings: { fsync: 'on', max_connections: '300' } });
  const redis = await startRedis({ appendonly: true });
  const admin = new pg.Client({ connectionString: postgres.connectionString });
  await admin.connect();
  const database = (name: string) => postgres.connectionString.replace(/\/postgres$/, `/${name}`);
  try {
    for (const name of ['bench_commitd', 'bench_floor']) {
      await admin.query(`CREATE DATABASE ${name}`);
      const client = new pg.Client({ connectionString: database(name) });
      await client.connect();
      await client.query(TABLE_DDL);
      if (name === 'bench_floor') await client.query(MARKER_DDL);
      await client.end();
    }
  } finally {
    await admin.end();
  }
  return {
    postgres,
    redis,
    commitdDatabase: database('bench_commitd'),
    floorDatabase: database('bench_floor'),
    async stop() {
      await Promise.allSettled([postgres.cleanup(), redis.cleanup()]);
    },
  };
}

/** commitd's store definitions for this workload. */
export function serviceStoreDefinitions(services: Services): { name: string; type: string; options: Record<string, unknown> }[] {
  return [
    { name: 'cache', type: 'redis', options: { url: services.redis.url } },
    { name: 'orders', type: 'postgres', options: { connectionString: services.commitdDatabase } },
  ];
}

/** The body of `POST /v1/commits` for one session of this workload. */
export function serviceBody(key: string, payload: string): { key: string; changes: Record<string, unknown[]> } {
  return {
    key,
    changes: {
      cache: [{ command: ['SET', `bench:${key}`, payload] }],
      orders: [{ sql: INSERT_SQL, params: [key, payload] }],
    },
  };
}

/** The in-process floor of this workload. */
export class ServicesFloor {
  readonly #kv: Kv;
  readonly #pool: pg.Pool;
  readonly #redis: Redis;
  /** Connections for WATCH, one per session in flight (WATCH is per connection). */
  readonly #idle: Redis[] = [];
  readonly #owner = `floor-${process.pid}`;

  constructor(kv: Kv, services: Services, connections: number) {
    this.#kv = kv;
    this.#pool = new pg.Pool({ connectionString: services.floorDatabase, max: connections });
    this.#redis = new Redis(services.redis.url, { maxRetriesPerRequest: 1 });
    // A failed command rejects its caller; the connection's own events need no report.
    this.#redis.on('error', () => undefined);
  }

  #acquire(): Redis {
    const redis = this.#idle.pop() ?? this.#redis.duplicate();
    redis.on('error', () => undefined);
    return redis;
  }

  async session(key: string, payload: string): Promise<void> {
    const marker = `commitd:session:${key}`;
    const [found, cached] = await Promise.all([this.#pool.query('SELECT session_id FROM commitd_sessions WHERE key = $1', [key]), this.#redis.exists(marker)]);
    if (found.rowCount !== 0 || cached !== 0) throw new Error(`${key} is already committed`);
    const log = serviceBody(key, payload).changes;
    const record = JSON.stringify({
      state: 'committing',
      stores: SERVICE_STORES,
      owner: this.#owner,
      startedAt: new Date().toISOString(),
      sessionId: STORE_ID,
      oneShot: true,
      log,
    });
    const revision = await this.#kv.txn([
      { type: 'check', key: `results/${key}`, exists: false },
      { type: 'create', key: `sessions/${key}`, value: record },
    ]);
    const redis = this.#acquire();
    try {
      await redis.watch(marker);
      const exec = await redis.multi().set(`bench:${key}`, payload).set(marker, STORE_ID).exec();
      if (exec === null) throw new Error(`${key}: the redis marker changed`);
    } finally {
      this.#idle.push(redis);
    }
    const client = await this.#pool.connect();
    try {
      await client.query('BEGIN');
      await client.query(INSERT_SQL, [key, payload]);
      await client.query('INSERT INTO commitd_sessions (key, session_id) VALUES ($1, $2)', [key, STORE_ID]);
      await client.query('COMMIT');
    } catch (err) {
      await client.query('ROLLBACK').catch(() => undefined);
      throw err;
    } finally {
      client.release();
    }
    const result = JSON.stringify({
      sessionId: STORE_ID,
      stores: Object.fromEntries(SERVICE_STORES.map((name) => [name, STORE_ID])),
      committedAt: new Date().toISOString(),
    });
    await this.#kv.txn([
      { type: 'create', key: `results/${key}`, value: result, options: { ttlSeconds: 24 * 3600 } },
      { type: 'delete', key: `sessions/${key}`, revision },
    ]);
  }

  async close(): Promise<void> {
    for (const redis of this.#idle.splice(0)) redis.disconnect();
    this.#redis.disconnect();
    await this.#pool.end();
  }
}

/**
 * A mixed session — postgres + redis + etcd + sqlite + nats + mysql (XA mode, on MariaDB) —
 * SIGKILLed after the second of the six stores committed: after a restart every store holds
 * its data exactly once (a Redis INCR included, and the NATS message, published by the
 * recovery) and the session ID is the one its changes define. Both KV backends.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Etcd3 } from 'etcd3';
import { Redis } from 'ioredis';
import { sessionIdOfChanges } from '../src/core/session-id.ts';
import { makeTempDir, removeTempDir } from './harness/child.ts';
import { mariadbBinary, mariadbInstallDb, mysqlRows, startMariadb, type MariadbServer } from './harness/mariadb.ts';
import { postgresBinDir, startPostgres, type PostgresServer } from './harness/postgres.ts';
import { natsBinary, startNats, type NatsServer } from './harness/nats.ts';
import { redisBinary, startRedis, type RedisServer } from './harness/redis.ts';
import { skipUnlessFound } from './harness/require.ts';
import { startProcess } from './support/process.ts';
import { natsReader, type NatsReader } from './support/nats.ts';
import { postgresRows, sqliteRows } from './support/rows.ts';
import { KV_BACKENDS, kvNeeds, sharedEtcdServer } from './support/service.ts';

describe('a mixed six-store session crashed after the second store', {
  skip: skipUnlessFound({
    PostgreSQL: postgresBinDir(),
    'redis-server': redisBinary(),
    'nats-server': natsBinary(),
    mariadbd: mariadbBinary(),
    'mariadb-install-db': mariadbInstallDb(),
  }),
}, () => {
  let postgres: PostgresServer;
  let redis: RedisServer;
  let nats: NatsServer;
  let reader: NatsReader;
  let mariadb: MariadbServer;
  let warehouse: string;
  const root = makeTempDir('mixed');

  before(async () => {
    [postgres, redis, nats, mariadb] = await Promise.all([startPostgres(), startRedis(), startNats(), startMariadb()]);
    await postgresRows(postgres.connectionString, 'CREATE TABLE orders(k TEXT, total INTEGER)');
    reader = await natsReader(nats.url);
    // commitd's default retention is a day: so must the duplicate window be.
    await reader.addStream('mixed', ['mixed.>'], 86_400);
    warehouse = await mariadb.createDatabase('warehouse');
    await mysqlRows(warehouse, 'CREATE TABLE stock (k VARCHAR(200) NOT NULL, moved INT NOT NULL) ENGINE=InnoDB');
  });
  after(async () => {
    await reader?.close();
    await Promise.all([postgres?.cleanup(), redis?.cleanup(), nats?.cleanup(), mariadb?.cleanup()]);
    await removeTempDir(root);
  });

  for (const kv of KV_BACKENDS) {
    it(`commits every store exactly once after a restart (${kv} KV)`, { skip: skipUnlessFound(kvNeeds(kv)) }, async () => {
      const dir = join(root, kv);
      const etcd = await sharedEtcdServer();
      const flagsPrefix = `/flags-${randomUUID()}/`;
      const ledger = join(dir, 'ledger.db');
      const stores = [
        { name: 'cache', type: 'redis', options: { url: redis.url } },
        { name: 'flags', type: 'etcd', options: { endpoints: etcd.endpoints, prefix: flagsPrefix } },
        { name: 'ledger', type: 'sqlite', options: { path: ledger } },
        { name: 'orders', type: 'postgres', options: { connectionString: postgres.connectionString } },
        { name: 'outbox', type: 'nats', options: { servers: nats.url, stream: 'mixed' } },
        { name: 'warehouse', type: 'mysql', options: { connectionString: warehouse, xa: true } },
      ];
      const options = { dir, stores, etcd: kv === 'etcd' ? { endpoints: etcd.endpoints, namespace: `/mixed-${randomUUID()}/` } : undefined };
      const setup = await startProcess(options);
      assert.equal(
        (await setup.request('POST', '/v1/commits', { key: `schema-${kv}`, changes: { ledger: [{ sql: 'CREATE TABLE entries(k TEXT, amount INTEGER)' }] } }))
          .status,
        200,
      );
      await setup.process.stop();

      const key = `mixed-${kv}`;
      const counter = `visits-${kv}`;
      const changes = {
        cache: [{ command: ['INCR', counter] }],
        flags: [{ op: 'put', key: `feature-${kv}`, value: 'on' }],
        ledger: [{ sql: 'INSERT INTO entries(k, amount) VALUES (?, ?)', params: [key, 5] }],
        orders: [{ sql: 'INSERT INTO orders(k, total) VALUES ($1, $2)', params: [key, 5] }],
        outbox: [{ subject: `mixed.order.${kv}`, data: { key, total: 5 } }],
        warehouse: [{ sql: 'INSERT INTO stock (k, moved) VALUES (?, ?)', params: [key, -5] }],
      };
      const doomed = await startProcess(options, 'commit.afterStore.2=crash');
      await assert.rejects(doomed.request('POST', '/v1/commits', { key, changes }));
      assert.equal((await doomed.process.waitForExit(20_000)).signal, 'SIGKILL');

      const restarted = await startProcess(options);
      const redisClient = new Redis(redis.url);
      const etcdClient = new Etcd3({ hosts: etcd.endpoints });
      try {
        const shown = await restarted.request('GET', `/v1/sessions/${key}`);
        assert.equal(shown.status, 200, JSON.stringify(shown.body));
        assert.equal(shown.body.state, 'committed');
        assert.equal(shown.body.sessionId, sessionIdOfChanges(changes));
        const retried = await restarted.request('POST', '/v1/commits', { key, changes });
        assert.equal(retried.body.sessionId, sessionIdOfChanges(changes));

        assert.equal(await redisClient.get(counter), '1', 'INCR applied exactly once');
        assert.equal(await etcdClient.get(`${flagsPrefix}feature-${kv}`).string(), 'on');
        assert.deepEqual(sqliteRows(ledger, 'SELECT count(*) AS n FROM entries WHERE k = ?', key), [{ n: 1 }]);
        assert.deepEqual(await postgresRows(postgres.connectionString, 'SELECT count(*)::int AS n FROM orders WHERE k = $1', [key]), [{ n: 1 }]);
        assert.equal(await reader.count('mixed', `mixed.order.${kv}`), 1, 'the message published exactly once');
        assert.deepEqual(await mysqlRows(warehouse, 'SELECT count(*) AS n FROM stock WHERE k = ?', [key]), [{ n: 1 }]);
        assert.deepEqual(await mysqlRows(warehouse, 'XA RECOVER'), [], 'nothing left prepared');
      } finally {
        redisClient.disconnect();
        etcdClient.close();
        await restarted.process.stop();
      }
    });
  }
});

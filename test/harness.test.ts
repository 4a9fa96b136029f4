import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { makeTempDir, removeTempDir, spawnTsx } from './harness/child.ts';
import { etcdBinary, etcdRequest, startEtcd, startEtcdCluster } from './harness/etcd.ts';
import { freePort, waitForPort } from './harness/ports.ts';
import { postgresBinDir, startPostgres } from './harness/postgres.ts';
import { redisBinary, startRedis } from './harness/redis.ts';
import { skipUnlessFound } from './harness/require.ts';
import { postgresRows } from './support/rows.ts';

const b64 = (text: string): string => Buffer.from(text).toString('base64');

async function etcdPut(endpoint: string, key: string, value: string): Promise<void> {
  await etcdRequest(endpoint, '/v3/kv/put', { key: b64(key), value: b64(value) });
}

async function etcdGet(endpoint: string, key: string): Promise<string | undefined> {
  const reply = (await etcdRequest(endpoint, '/v3/kv/range', { key: b64(key) })) as { kvs?: { value?: string }[] };
  const value = reply.kvs?.[0]?.value;
  return value === undefined ? undefined : Buffer.from(value, 'base64').toString('utf8');
}

/** Retries `attempt` on any endpoint until one succeeds, e.g. while a new leader is elected. */
async function onAnyEndpoint<T>(endpoints: string[], attempt: (endpoint: string) => Promise<T>, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  while (Date.now() < deadline) {
    for (const endpoint of endpoints) {
      try {
        return await attempt(endpoint);
      } catch (err) {
        lastError = err;
      }
    }
    await sleep(100);
  }
  throw lastError;
}

test('ports: freePort is bindable and waitForPort times out on a closed port', async () => {
  const port = await freePort();
  assert.ok(port > 0 && port < 65536);
  await assert.rejects(waitForPort(port, { timeoutMs: 200 }), /did not accept connections/);
});

test('child: waits for a line of a tsx child, then SIGKILLs it', async () => {
  const dir = makeTempDir('child');
  try {
    const script = path.join(dir, 'ready.ts');
    // biome-ignore lint/suspicious/noTemplateCurlyInString: the TypeScript source written to a file holds a template literal
    writeFileSync(script, 'const n: number = 42;\nconsole.log(`ready ${n}`);\nsetInterval(() => {}, 1000);\n');
    const child = await spawnTsx(script);
    const match = await child.waitForLine(/^ready (\d+)$/, { timeoutMs: 15_000 });
    assert.equal(match[1], '42');
    const exit = await child.kill();
    assert.equal(exit.signal, 'SIGKILL');
  } finally {
    await removeTempDir(dir);
  }
});

test('etcd: a key survives SIGKILL and restart on the same data dir', { skip: skipUnlessFound({ etcd: etcdBinary() }) }, async () => {
  const etcd = await startEtcd();
  try {
    const [endpoint] = etcd.endpoints as [string];
    await etcdPut(endpoint, 'harness/k', 'v1');
    assert.equal(await etcdGet(endpoint, 'harness/k'), 'v1');
    await etcd.kill();
    assert.equal(etcd.running, false);
    await etcd.restart();
    assert.equal(etcd.endpoints[0], endpoint);
    assert.equal(await etcdGet(endpoint, 'harness/k'), 'v1');
  } finally {
    await etcd.cleanup();
  }
});

test('etcd cluster: writes continue after the leader is killed, and it rejoins', { skip: skipUnlessFound({ etcd: etcdBinary() }) }, async () => {
  const cluster = await startEtcdCluster(3);
  try {
    assert.equal(cluster.endpoints.length, 3);
    const leaderIndex = await cluster.leader();
    const leader = cluster.members[leaderIndex]!;
    await leader.kill();
    const survivors = cluster.members.filter((m) => m !== leader).map((m) => m.clientUrl);
    await onAnyEndpoint(survivors, (endpoint) => etcdPut(endpoint, 'harness/after-failover', 'yes'));
    const newLeader = await cluster.leader();
    assert.notEqual(newLeader, leaderIndex);
    await leader.restart();
    const seen = await onAnyEndpoint([leader.clientUrl], (endpoint) => etcdGet(endpoint, 'harness/after-failover'));
    assert.equal(seen, 'yes');
  } finally {
    await cluster.cleanup();
  }
});

test('postgres: answers select 1, and again after SIGKILL and restart', { skip: skipUnlessFound({ PostgreSQL: postgresBinDir() }) }, async () => {
  const server = await startPostgres();
  try {
    assert.match(server.connectionString, /^postgres:\/\/postgres@127\.0\.0\.1:\d+\/postgres$/);
    assert.deepEqual(await postgresRows(server.connectionString, 'select 1 as one'), [{ one: 1 }]);
    await server.kill();
    await server.restart();
    assert.deepEqual(await postgresRows(server.connectionString, 'select 1 as one'), [{ one: 1 }]);
  } finally {
    await server.cleanup();
  }
});

test('postgres twoPhase: max_prepared_transactions is 10', { skip: skipUnlessFound({ PostgreSQL: postgresBinDir() }) }, async () => {
  const server = await startPostgres({ twoPhase: true });
  try {
    const rows = await postgresRows<{ max_prepared_transactions: string }>(server.connectionString, 'show max_prepared_transactions');
    assert.equal(rows[0]?.max_prepared_transactions, '10');
  } finally {
    await server.cleanup();
  }
});

test('redis: answers PING, stalls while paused, keeps AOF data across SIGKILL', { skip: skipUnlessFound({ 'redis-server': redisBinary() }) }, async () => {
  const server = await startRedis({ appendonly: true });
  const client = new Redis(server.url, { lazyConnect: true, commandTimeout: 500, maxRetriesPerRequest: 0 });
  client.on('error', () => {});
  try {
    await client.connect();
    assert.equal(await client.ping(), 'PONG');
    await client.set('harness:k', 'v1');

    server.pause();
    await assert.rejects(client.ping(), /timed out/i);
    server.resume();

    await server.kill();
    await server.restart();
    const fresh = new Redis(server.url, { maxRetriesPerRequest: 0 });
    try {
      assert.equal(await fresh.get('harness:k'), 'v1');
    } finally {
      fresh.disconnect();
    }
  } finally {
    client.disconnect();
    await server.cleanup();
  }
});

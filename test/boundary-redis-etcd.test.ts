/**
 * DESIGN.md "The boundary", point 1, for `redis` and `etcd` stores, over HTTP: a change on a
 * marker key is refused with `400 invalid_request` naming the rule (`marker-key`), and
 * nothing of the request is applied. What stops each: for Redis, the keys the server itself
 * names for the command (`COMMAND GETKEYS`, `src/stores/redis/store.ts`); for etcd, the
 * store's check of every key against its marker prefix (`src/stores/etcd/store.ts`).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Redis } from 'ioredis';
import { redisBinary, startRedis, type RedisServer } from './harness/redis.ts';
import { skipUnlessFound } from './harness/require.ts';
import { sharedEtcdServer, startTestService, type TestService } from './support/service.ts';

let unique = 0;
const freshKey = (label: string) => `${label}-${process.pid}-${++unique}`;

describe('redis and etcd stores: marker keys out of reach (DESIGN "The boundary" 1)', { skip: skipUnlessFound({ 'redis-server': redisBinary() }) }, () => {
  let redis: RedisServer;
  let client: Redis;
  let service: TestService;
  const commit = (key: string, changes: Record<string, unknown[]>) =>
    service.app.inject({ method: 'POST', url: '/v1/commits', headers: { 'content-type': 'application/json' }, payload: JSON.stringify({ key, changes }) });

  before(async () => {
    redis = await startRedis();
    client = new Redis(redis.url);
    const etcd = await sharedEtcdServer();
    service = await startTestService({
      kv: 'sqlite',
      stores: [
        { name: 'cache', type: 'redis', options: { url: redis.url } },
        { name: 'config', type: 'etcd', options: { endpoints: etcd.endpoints, prefix: `/boundary-${process.pid}/` } },
      ],
    });
    const first = await commit('ret-2', { cache: [{ command: ['SET', 'first', '1'] }] });
    assert.equal(first.statusCode, 200, first.body);
  });
  after(async () => {
    client?.disconnect();
    await service?.dispose();
    await redis?.cleanup();
  });

  async function assertRefused(changes: Record<string, unknown[]>, label: string): Promise<void> {
    const marker = await client.get('commitd:session:ret-2');
    assert.ok(marker, 'the marker of ret-2 is there');
    const key = freshKey('attack');
    const response = await commit(key, { cache: [{ command: ['SET', key, 'x'] }], ...changes });
    assert.equal(response.statusCode, 400, `${label}: ${response.body}`);
    const problem = JSON.parse(response.body) as { code: string; rule: string; detail: string };
    assert.equal(problem.code, 'invalid_request');
    assert.equal(problem.rule, 'marker-key', `${label}: ${problem.detail}`);
    assert.equal(await client.get('commitd:session:ret-2'), marker, `${label}: the marker is untouched`);
    assert.equal(await client.exists(key), 0, `${label}: the other change of the request was not applied`);
  }

  // COMMAND GETKEYS names commitd:session:ret-2 among each command's keys.
  it('refuses DEL, SET, EXPIRE and MSET on a Redis marker key', async () => {
    await assertRefused({ cache: [{ command: ['DEL', 'commitd:session:ret-2'] }] }, 'DEL');
    await assertRefused({ cache: [{ command: ['SET', 'commitd:session:ret-2', 'forged'] }] }, 'SET');
    await assertRefused({ cache: [{ command: ['EXPIRE', 'commitd:session:ret-2', '1'] }] }, 'EXPIRE');
    await assertRefused({ cache: [{ command: ['MSET', 'mine', '1', 'commitd:session:ret-2', 'forged'] }] }, 'MSET');
  });

  // The etcd store checks every key against its marker prefix (commitd/).
  it('refuses etcd puts and deletes on its marker keys', async () => {
    await assertRefused({ config: [{ op: 'put', key: 'commitd/sessions/ret-2', value: 'forged' }] }, 'etcd put');
    await assertRefused({ config: [{ op: 'delete', key: 'commitd/sessions/ret-2' }] }, 'etcd delete');
  });

  it('still commits the worker’s own keys', async () => {
    const key = freshKey('own');
    const response = await commit(key, {
      cache: [{ command: ['MSET', `${key}:a`, '1', `${key}:b`, '2'] }],
      config: [{ op: 'put', key: `${key}`, value: 'v' }],
    });
    assert.equal(response.statusCode, 200, response.body);
    assert.equal(await client.get(`${key}:b`), '2');
  });
});

/**
 * A Redis session holds no connection between requests: its commands wait in commitd until
 * prepare, which runs WATCH/MULTI/EXEC on a fresh connection. So a Redis restart between
 * requests heals by itself, and a request refused while Redis is down (`503`, the key lookup
 * of the boundary check cannot run) leaves the session as it was. The session commits with
 * the ID of an undisturbed run, each command applied once. Over HTTP, on a throwaway server.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { LightMyRequestResponse } from 'fastify';
import { Redis } from 'ioredis';
import { sessionIdOfChanges } from '../src/core/session-id.ts';
import { redisBinary, startRedis, type RedisServer } from './harness/redis.ts';
import { skipUnlessFound } from './harness/require.ts';
import { startTestService, type TestService } from './support/service.ts';
import { waitFor } from './support/wait.ts';

describe('redis: a restart between requests heals', { skip: skipUnlessFound({ 'redis-server': redisBinary() }) }, () => {
  let server: RedisServer;
  let service: TestService;
  const post = (url: string, body: unknown): Promise<LightMyRequestResponse> =>
    service.app.inject({ method: 'POST', url, headers: { 'content-type': 'application/json' }, payload: JSON.stringify(body) });
  const changes = (key: string, list: unknown[]) => post(`/v1/sessions/${key}/changes`, { store: 'cache', changes: list });
  const incr = (name: string) => ({ command: ['INCR', name] });

  /** Reads with a connection of its own (the server restarts under the suite). */
  async function read(...keys: string[]): Promise<(string | null)[]> {
    const redis = new Redis(server.url, { maxRetriesPerRequest: 1, lazyConnect: true });
    redis.on('error', () => undefined);
    try {
      await redis.connect();
      return await redis.mget(...keys);
    } finally {
      redis.disconnect();
    }
  }

  /** A request as a worker sends it: again after each 503, a bounded number of times. */
  async function send(url: string, body: unknown): Promise<{ response: LightMyRequestResponse; unavailable: number }> {
    let unavailable = 0;
    for (;;) {
      const response = await post(url, body);
      if (response.statusCode !== 503 || unavailable >= 20) return { response, unavailable };
      unavailable += 1;
      // The shared connection reconnects with a backoff of its own; the next attempt waits for Redis to answer.
      await waitFor('redis to answer', async () => ((await read('nothing')).length === 1 ? true : undefined), { timeoutMs: 10_000 });
    }
  }

  before(async () => {
    server = await startRedis();
    service = await startTestService({ kv: 'sqlite', stores: [{ name: 'cache', type: 'redis', options: { url: server.url, statementTimeout: '2s' } }] });
  });
  after(async () => {
    await service?.dispose();
    await server?.cleanup();
  });

  it('restarted between requests: at most one 503, the session commits every command once', async () => {
    const key = 'rheal-1';
    assert.equal((await post('/v1/sessions', { key, stores: ['cache'] })).statusCode, 201);
    assert.equal((await changes(key, [incr('rheal-1:n')])).statusCode, 200);
    await server.restart();
    const second = await send(`/v1/sessions/${key}/changes`, { store: 'cache', changes: [incr('rheal-1:n'), { command: ['SET', 'rheal-1:s', 'v'] }] });
    assert.equal(second.response.statusCode, 200, second.response.body);
    assert.ok(second.unavailable <= 1, `the worker saw ${second.unavailable} 503s`);
    const committed = await send(`/v1/sessions/${key}/commit`, {});
    assert.equal(committed.response.statusCode, 200, committed.response.body);
    assert.equal(second.unavailable + committed.unavailable <= 1, true);
    assert.equal(
      JSON.parse(committed.response.body).sessionId,
      sessionIdOfChanges({ cache: [incr('rheal-1:n'), incr('rheal-1:n'), { command: ['SET', 'rheal-1:s', 'v'] }] }),
    );
    assert.deepEqual(await read('rheal-1:n', 'rheal-1:s'), ['2', 'v']);
  });

  it('a request while Redis is down answers 503 and leaves the session as it was', async () => {
    const key = 'rheal-2';
    assert.equal((await post('/v1/sessions', { key, stores: ['cache'] })).statusCode, 201);
    assert.equal((await changes(key, [incr('rheal-2:n')])).statusCode, 200);
    await server.stop();
    const refused = await changes(key, [{ command: ['SET', 'rheal-2:lost', 'v'] }]);
    assert.equal(refused.statusCode, 503, refused.body);
    await server.restart(); // not running: starts it on the same port
    const view = await service.app.inject({ method: 'GET', url: `/v1/sessions/${key}` });
    assert.equal(JSON.parse(view.body).state, 'active', 'the session stays open');
    const next = await send(`/v1/sessions/${key}/changes`, { store: 'cache', changes: [incr('rheal-2:n')] });
    assert.equal(next.response.statusCode, 200, next.response.body);
    const committed = await send(`/v1/sessions/${key}/commit`, {});
    assert.equal(committed.response.statusCode, 200, committed.response.body);
    assert.equal(JSON.parse(committed.response.body).sessionId, sessionIdOfChanges({ cache: [incr('rheal-2:n'), incr('rheal-2:n')] }));
    assert.deepEqual(await read('rheal-2:n', 'rheal-2:lost'), ['2', null]);
  });
});

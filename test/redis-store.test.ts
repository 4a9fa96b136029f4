/** What only the redis store type does; what every store type does is in test/contract/redis.test.ts. */
import assert from 'node:assert/strict';
import { after, afterEach, before, describe, it, type TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import { ChangeRejectedError } from '../src/stores/helper.ts';
import { InvalidRedisCommandError, redisStoreType, type RedisChange } from '../src/stores/redis/store.ts';
import type { Store } from '../src/stores/api.ts';
import { keyBytes, toHex } from '../src/core/keys.ts';
import { redisBinary, startRedis, type RedisServer } from './harness/redis.ts';
import { skipOrFail } from './harness/require.ts';
import { begun, commitOnce } from './support/store-session.ts';

const ctx = { name: 'cache', logger: pino({ level: 'silent' }), dataDir: '.', retentionSeconds: 60 };

const cmd = (...command: (string | number)[]): RedisChange => ({ command });

describe('redis store', () => {
  // One server for the suite; tests use their own keys.
  let server: RedisServer | undefined;
  let client: Redis | undefined;
  let stores: Store<RedisChange>[] = [];

  before(async () => {
    if (!redisBinary()) return;
    server = await startRedis();
    client = new Redis(server.url, { maxRetriesPerRequest: 1 });
    client.on('error', () => undefined);
  });
  afterEach(async () => {
    for (const store of stores) await store.close();
    stores = [];
  });
  after(async () => {
    client?.disconnect();
    await server?.cleanup();
  });

  function requireServer(t: TestContext): RedisServer | undefined {
    if (!server) skipOrFail(t, 'redis-server not found (set REDIS_BIN or put redis-server on PATH)');
    return server;
  }

  async function open(): Promise<Store<RedisChange>> {
    const store = await redisStoreType.create({ url: (server as RedisServer).url }, ctx);
    stores.push(store);
    return store;
  }

  const redis = (): Redis => client as Redis;
  const marker = (key: string): Promise<string | null> => redis().get(`commitd:session:${key}`);

  it('commits the commands and the marker in one MULTI, once', async (t) => {
    if (!requireServer(t)) return;
    const store = await open();
    const id = await commitOnce(store, 'rd-commit', [cmd('SET', 'rd-commit:a', 'x'), cmd('hset', 'rd-commit:h', 'f', 1), cmd('INCRBY', 'rd-commit:n', 5)]);
    assert.equal(await redis().get('rd-commit:a'), 'x');
    assert.deepEqual(await redis().hgetall('rd-commit:h'), { f: '1' });
    assert.equal(await redis().get('rd-commit:n'), '5');
    assert.equal(await marker('rd-commit'), toHex(id));
    const ttl = await redis().ttl('commitd:session:rd-commit');
    assert.ok(ttl > 0 && ttl <= 60, `marker TTL ${ttl}`);
  });

  it('committers racing on one key (a paused owner and its successors): INCR lands once', async (t) => {
    if (!requireServer(t)) return;
    const racers = await Promise.all([1, 2, 3, 4, 5, 6].map(() => open()));
    const sessions = await Promise.all(racers.map((store) => begun(store, 'rd-race', [cmd('INCR', 'rd-race:n')])));
    const ids = await Promise.all(sessions.map((session) => session.commit(keyBytes('rd-race'))));
    assert.equal(new Set(ids.map(toHex)).size, 1);
    assert.equal(await redis().get('rd-race:n'), '1');

    // Other changes under the same key: the loser fails with MARKER_CONFLICT, its commands unapplied.
    const [a, b] = racers as [Store<RedisChange>, Store<RedisChange>];
    const first = await begun(a, 'rd-race-2', [cmd('SET', 'rd-race-2:v', 'a')]);
    const second = await begun(b, 'rd-race-2', [cmd('SET', 'rd-race-2:v', 'b')]);
    await first.commit(keyBytes('rd-race-2'));
    await assert.rejects(second.commit(keyBytes('rd-race-2')), { code: 'MARKER_CONFLICT' });
    assert.equal(await redis().get('rd-race-2:v'), 'a');
  });

  it('refuses commands outside the write allowlist, in any case', async (t) => {
    if (!requireServer(t)) return;
    const store = await open();
    const session = await begun(store, 'rd-allow', []);
    for (const command of [
      ['GET', 'k'],
      ['keys', '*'],
      ['FLUSHALL'],
      ['flushall'],
      ['EVAL', 'return 1', 0],
      ['MULTI'],
      ['WATCH', 'k'],
      ['CONFIG', 'SET', 'x', 'y'],
      [1, 2],
    ]) {
      await assert.rejects(
        session.apply({ command }),
        (e: unknown) => {
          assert.ok(e instanceof InvalidRedisCommandError);
          assert.equal(e.code, 'INVALID_REQUEST');
          return true;
        },
        JSON.stringify(command),
      );
    }
    await session.cancel();
    await commitOnce(store, 'rd-allow-2', [cmd('set', 'rd-allow:k', 'v'), cmd('Expire', 'rd-allow:k', 100)]);
    assert.equal(await redis().get('rd-allow:k'), 'v');
  });

  it('a command Redis refuses when queued (wrong arity) fails at prepare, nothing applied', async (t) => {
    if (!requireServer(t)) return;
    const store = await open();
    const session = await begun(store, 'rd-arity', [cmd('SET', 'rd-arity:a', '1'), cmd('SET', 'rd-arity:b')]);
    await assert.rejects(session.prepare(keyBytes('rd-arity')), (e: unknown) => {
      assert.ok(e instanceof ChangeRejectedError);
      assert.match(e.message, /changes\[1\] \(SET: ERR wrong number of arguments/);
      assert.equal((e.detail.failed as { index: number }[])[0]?.index, 1, 'the detail counts changes as the message does, from 0');
      return true;
    });
    await session.cancel();
    assert.equal(await redis().get('rd-arity:a'), null);
    assert.equal(await marker('rd-arity'), null);
  });

  it('a command failing at EXEC (WRONGTYPE) is reported; the rest and the marker stay applied', async (t) => {
    if (!requireServer(t)) return;
    const store = await open();
    await redis().set('rd-wrongtype:s', 'string');
    const session = await begun(store, 'rd-wrongtype', [cmd('HSET', 'rd-wrongtype:s', 'f', 'v'), cmd('SET', 'rd-wrongtype:ok', '1')]);
    await assert.rejects(session.commit(keyBytes('rd-wrongtype')), (e: unknown) => {
      assert.ok(e instanceof ChangeRejectedError);
      assert.deepEqual(e.detail.failed, [{ index: 0, command: 'HSET', message: 'WRONGTYPE Operation against a key holding the wrong kind of value' }]);
      assert.equal(e.detail.markerWritten, true);
      return true;
    });
    assert.equal(await redis().get('rd-wrongtype:ok'), '1');
    assert.notEqual(await marker('rd-wrongtype'), null);
    const recovery = store.session();
    await recovery.beginRecovery(keyBytes('rd-wrongtype'));
    assert.equal(recovery.skipping, true);
  });

  // Last: it kills and restarts the server.
  it('fails in bounded time while Redis is down, and recovers when it is back', async (t) => {
    const redisServer = requireServer(t);
    if (!redisServer) return;
    const store = await open();
    await commitOnce(store, 'rd-down-warmup', []);
    const session = await begun(store, 'rd-down', [cmd('SET', 'rd-down:k', 'v')]);
    await redisServer.kill('SIGKILL');

    let started = Date.now();
    await assert.rejects(session.commit(keyBytes('rd-down')), { code: 'UNAVAILABLE' });
    assert.ok(Date.now() - started < 12_000, `commit took ${Date.now() - started} ms to fail`);
    await session.cancel();
    started = Date.now();
    await assert.rejects(store.session().begin(keyBytes('rd-down-2')), { code: 'UNAVAILABLE' });
    assert.ok(Date.now() - started < 12_000, `begin took ${Date.now() - started} ms to fail`);

    await redisServer.restart();
    const deadline = Date.now() + 10_000;
    for (;;) {
      try {
        await commitOnce(store, 'rd-down', [cmd('SET', 'rd-down:k', 'after')]);
        break;
      } catch (err) {
        if (Date.now() > deadline) throw err;
        await sleep(200);
      }
    }
    assert.equal(await redis().get('rd-down:k'), 'after');
  });
});

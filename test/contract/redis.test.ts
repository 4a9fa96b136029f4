/** The store contract against the built-in `redis` store type. */
import { Redis } from 'ioredis';
import { pino } from 'pino';
import { redisStoreType, type RedisChange } from '../../src/stores/redis/store.ts';
import { redisBinary, startRedis } from '../harness/redis.ts';
import { storeContract } from './store-contract.ts';

storeContract<RedisChange>({
  name: 'redis',
  unavailable: () => (redisBinary() ? undefined : 'redis-server not found (set REDIS_BIN or put redis-server on PATH)'),
  async start() {
    const server = await startRedis();
    const reader = new Redis(server.url, { maxRetriesPerRequest: 1 });
    return {
      open: async () => redisStoreType.create({ url: server.url }, { name: 'contract', logger: pino({ level: 'silent' }), dataDir: '.', retentionSeconds: 60 }),
      // INCR counts how many times the sample landed.
      changes: (tag) => [{ command: ['INCR', `${tag}:n`] }, { command: ['SET', `${tag}:v`, 'set'] }],
      applied: async (tag) => Number((await reader.get(`${tag}:n`)) ?? 0),
      // Wrong arity: Redis refuses it when queued, at prepare.
      rejected: (tag) => ({ command: ['SET', `${tag}:v`] }),
      async stop() {
        reader.disconnect();
        await server.cleanup();
      },
    };
  },
});

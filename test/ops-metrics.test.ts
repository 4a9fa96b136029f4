/**
 * What an operator's monitoring reads: HTTP request durations by route pattern and status
 * in /metrics, and /readyz answering within 1 s even while etcd is frozen (SIGSTOP).
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { pino } from 'pino';
import { createService } from '../src/service.ts';
import { makeTempDir, removeTempDir } from './harness/child.ts';
import { startEtcd } from './harness/etcd.ts';
import { skipUnlessFound } from './harness/require.ts';
import { kvNeeds, sqliteStores, startTestService } from './support/service.ts';
import { waitFor } from './support/wait.ts';

function metricValue(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

describe('HTTP request metrics', () => {
  it('counts each answered request under its route pattern and status, never its path', async () => {
    const service = await startTestService({ kv: 'sqlite' });
    try {
      for (const key of ['m-1', 'm-2', 'm-3']) assert.equal((await service.app.inject({ method: 'GET', url: `/v1/sessions/${key}` })).statusCode, 404);
      const committed = await service.app.inject({
        method: 'POST',
        url: '/v1/commits',
        payload: { key: 'm-4', changes: { main: [{ sql: 'CREATE TABLE m (x)' }] } },
      });
      assert.equal(committed.statusCode, 200, committed.body);
      const text = (await service.app.inject({ method: 'GET', url: '/metrics' })).body;
      assert.equal(metricValue(text, 'commitd_http_request_duration_seconds_count{method="GET",route="/v1/sessions/:key",status="404"}'), 3);
      assert.equal(metricValue(text, 'commitd_http_request_duration_seconds_count{method="POST",route="/v1/commits",status="200"}'), 1);
      assert.ok(
        (metricValue(text, 'commitd_http_request_duration_seconds_sum{method="POST",route="/v1/commits",status="200"}') ?? 0) > 0,
        'durations are observed',
      );
      assert.doesNotMatch(text, /m-1|m-2|m-3/, 'keys never become label values');
    } finally {
      await service.dispose();
    }
  });
});

describe('/readyz while etcd is frozen', { skip: skipUnlessFound(kvNeeds('etcd')) }, () => {
  const dir = makeTempDir('readyz');
  after(() => removeTempDir(dir));

  it('answers 503 with Retry-After within 1 s, and 200 again once etcd is back', async () => {
    const etcd = await startEtcd();
    const service = await createService(
      {
        etcd: { endpoints: etcd.endpoints, namespace: '/readyz/' },
        dataDir: dir,
        host: '127.0.0.1',
        stores: sqliteStores(join(dir)),
        plugins: [],
        retentionSeconds: 3600,
        idleTimeoutMs: 60_000,
        maxOpenSessions: 100,
        leaseTtlSeconds: 10,
      },
      pino({ level: 'silent' }),
    );
    try {
      assert.equal((await service.app.inject({ method: 'GET', url: '/readyz' })).statusCode, 200);
      etcd.pause();
      try {
        for (let probe = 0; probe < 3; probe++) {
          const started = performance.now();
          const answer = await service.app.inject({ method: 'GET', url: '/readyz' });
          const elapsedMs = performance.now() - started;
          assert.equal(answer.statusCode, 503, answer.body);
          assert.equal(answer.headers['retry-after'], '1');
          // 1 s deadline, plus scheduling slack on a loaded machine; etcd's own timeout is 5 s.
          assert.ok(elapsedMs < 1_500, `/readyz took ${Math.round(elapsedMs)} ms`);
        }
        const scrape = await service.app.inject({ method: 'GET', url: '/metrics' });
        assert.equal(scrape.statusCode, 200, 'a scrape does not hang on the frozen KV either');
      } finally {
        etcd.resume();
      }
      await waitFor(
        '/readyz 200 again after etcd resumed',
        async () => ((await service.app.inject({ method: 'GET', url: '/readyz' })).statusCode === 200 ? true : undefined),
        {
          timeoutMs: 20_000,
        },
      );
    } finally {
      await service.close();
      await etcd.cleanup();
    }
  });
});

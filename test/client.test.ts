import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
  CommitdApiError,
  CommitdClient,
  CommitdNetworkError,
  CommitdProtocolError,
  CommitdUncertainError,
  SessionClosedError,
  backoffDelay,
  generateKey,
  isApiError,
  parseRetryAfter,
  problemFromResponse,
  type CommitdClientOptions,
  type RetryEvent,
} from '@commitd/client';
import { retry, type RetryEnvironment, type RetryPolicy } from '@commitd/client/retry';
import { KEY_PATTERN } from '../src/contract/schemas.ts';
import { makeTempDir, removeTempDir, type TrackedProcess } from './harness/child.ts';
import { freePort } from './harness/ports.ts';
import { spawnCommitd, type CommitdEnv } from './support/process.ts';
import { sqliteRows, sqliteRun } from './support/rows.ts';

// ---------------------------------------------------------------------------------------
// Pure parts
// ---------------------------------------------------------------------------------------

const POLICY: RetryPolicy = { maxAttempts: 6, baseDelayMs: 100, maxDelayMs: 1_000, maxElapsedMs: 10_000 };

/** A clock that only moves when slept on, and a record of the sleeps. */
function fakeEnvironment(random = () => 0.5): RetryEnvironment & { sleeps: number[] } {
  let now = 0;
  const sleeps: number[] = [];
  return {
    sleeps,
    now: () => now,
    random,
    sleep: async (ms) => {
      sleeps.push(ms);
      now += ms;
    },
  };
}

describe('backoff', () => {
  it('stays within [0, min(cap, base * 2^(n-1))) — full jitter', () => {
    for (let retryNumber = 1; retryNumber <= 12; retryNumber++) {
      const ceiling = Math.min(POLICY.maxDelayMs, POLICY.baseDelayMs * 2 ** (retryNumber - 1));
      assert.equal(
        backoffDelay(retryNumber, POLICY, () => 0),
        0,
      );
      assert.equal(
        backoffDelay(retryNumber, POLICY, () => 0.999999),
        ceiling - 1,
      );
      for (let i = 0; i < 50; i++) {
        const delay = backoffDelay(retryNumber, POLICY);
        assert.ok(delay >= 0 && delay < ceiling, `retry ${retryNumber}: ${delay} outside [0, ${ceiling})`);
      }
    }
  });

  it('doubles the ceiling up to the cap', () => {
    const half = (n: number) => backoffDelay(n, POLICY, () => 0.5);
    assert.deepEqual([1, 2, 3, 4, 5, 6].map(half), [50, 100, 200, 400, 500, 500]);
  });
});

describe('Retry-After', () => {
  const now = Date.parse('2025-01-01T00:00:00Z');

  it('reads delay-seconds', () => {
    assert.equal(parseRetryAfter('3', now), 3_000);
    assert.equal(parseRetryAfter(' 0 ', now), 0);
  });

  it('reads an HTTP date, a past one as 0', () => {
    assert.equal(parseRetryAfter('Wed, 01 Jan 2025 00:00:05 GMT', now), 5_000);
    assert.equal(parseRetryAfter('Tue, 31 Dec 2024 23:59:00 GMT', now), 0);
  });

  it('ignores what is absent or unreadable', () => {
    for (const value of [null, undefined, '', '-1', '1.5', 'soon', 'Someday']) assert.equal(parseRetryAfter(value, now), undefined, String(value));
  });
});

describe('retry', () => {
  it('retries until success, with growing jittered waits', async () => {
    const env = fakeEnvironment();
    let calls = 0;
    const result = await retry(
      async () => {
        if (++calls < 4) throw new Error('transient');
        return 'done';
      },
      { policy: POLICY, decide: () => ({ retry: true }), environment: env },
    );
    assert.equal(result, 'done');
    assert.deepEqual(env.sleeps, [50, 100, 200]);
  });

  it('waits at least Retry-After', async () => {
    const env = fakeEnvironment();
    let calls = 0;
    await retry(
      async () => {
        if (++calls === 1) throw new Error('busy');
      },
      { policy: POLICY, decide: () => ({ retry: true, notBeforeMs: 2_000 }), environment: env },
    );
    assert.deepEqual(env.sleeps, [2_000]);
  });

  it('throws the last error itself after maxAttempts', async () => {
    const env = fakeEnvironment();
    let calls = 0;
    const errors: Error[] = [];
    await assert.rejects(
      retry(
        async () => {
          const error = new Error(`attempt ${++calls}`);
          errors.push(error);
          throw error;
        },
        { policy: POLICY, decide: () => ({ retry: true }), environment: env },
      ),
      (error) => error === errors.at(-1),
    );
    assert.equal(calls, POLICY.maxAttempts);
  });

  it('stops when the next wait would pass maxElapsedMs, or when decide says so', async () => {
    const env = fakeEnvironment(() => 0.999);
    let calls = 0;
    const fail = async () => {
      calls++;
      throw new Error('down');
    };
    await assert.rejects(retry(fail, { policy: { ...POLICY, maxAttempts: 100, maxElapsedMs: 1_000 }, decide: () => ({ retry: true }), environment: env }));
    assert.ok(env.sleeps.reduce((a, b) => a + b, 0) <= 1_000);
    calls = 0;
    await assert.rejects(retry(fail, { policy: POLICY, decide: () => ({ retry: false }), environment: env }));
    assert.equal(calls, 1);
  });

  it('gives up at once when Retry-After is beyond the time left', async () => {
    const env = fakeEnvironment();
    let calls = 0;
    await assert.rejects(
      retry(
        async () => {
          calls++;
          throw new Error('unavailable');
        },
        { policy: POLICY, decide: () => ({ retry: true, notBeforeMs: 60_000 }), environment: env },
      ),
    );
    assert.equal(calls, 1);
    assert.deepEqual(env.sleeps, []);
  });
});

describe('keys', () => {
  it('generates distinct keys within the contract alphabet', () => {
    const keys = new Set(Array.from({ length: 1000 }, generateKey));
    assert.equal(keys.size, 1000);
    for (const key of keys) assert.match(key, new RegExp(KEY_PATTERN));
  });
});

describe('problems', () => {
  it('reads a contract problem', () => {
    const body = JSON.stringify({
      type: 'https://commitd.dev/problems/not_found',
      title: 'Not found',
      status: 404,
      detail: 'no session under key "k"',
      code: 'not_found',
    });
    const error = problemFromResponse(404, body);
    assert.ok(error instanceof CommitdApiError);
    assert.equal(error.code, 'not_found');
    assert.equal(error.status, 404);
    assert.equal(error.detail, 'no session under key "k"');
    assert.equal(error.problem.title, 'Not found');
    assert.ok(isApiError(error, 'not_found'));
    assert.ok(!isApiError(error, 'session_busy'));
  });

  it('keeps extension members and Retry-After', () => {
    const body = JSON.stringify({ status: 409, detail: 'UNIQUE constraint failed', code: 'store_conflict', store: 'main' });
    const error = problemFromResponse(409, body, 2_000);
    assert.ok(error instanceof CommitdApiError);
    assert.equal(error.problem.store, 'main');
    assert.equal(error.retryAfterMs, 2_000);
  });

  it('maps a body without a code by status when the status names one code', () => {
    const error = problemFromResponse(404, '{"statusCode":404,"error":"Not Found","message":"Route GET:/x not found"}');
    assert.ok(error instanceof CommitdApiError);
    assert.equal(error.code, 'not_found');
    assert.equal(error.detail, 'Route GET:/x not found');
  });

  it('is a protocol error outside the contract', () => {
    assert.ok(problemFromResponse(409, 'conflict') instanceof CommitdProtocolError, 'a 409 without a code is ambiguous');
    assert.ok(problemFromResponse(502, '<html>Bad Gateway</html>') instanceof CommitdProtocolError);
  });
});

// ---------------------------------------------------------------------------------------
// Retry behaviour over real sockets, against a scripted server
// ---------------------------------------------------------------------------------------

interface Received {
  readonly method: string;
  readonly url: string;
  readonly headers: http.IncomingHttpHeaders;
  readonly body: unknown;
}

type Answer = 'reset' | { status: number; body?: unknown; headers?: Record<string, string> };

/** An HTTP server that answers each request with the next scripted answer, or drops the connection. */
async function scriptedServer(answer: (request: Received, index: number) => Answer): Promise<{ url: string; received: Received[]; close(): Promise<void> }> {
  const received: Received[] = [];
  const server = http.createServer((req, res) => {
    let text = '';
    req.setEncoding('utf8');
    req.on('data', (chunk: string) => (text += chunk));
    req.on('end', () => {
      const request: Received = { method: req.method ?? '', url: req.url ?? '', headers: req.headers, body: text ? JSON.parse(text) : undefined };
      received.push(request);
      const reply = answer(request, received.length - 1);
      if (reply === 'reset') {
        req.socket.destroy();
        return;
      }
      const problem = reply.status >= 400;
      res.writeHead(reply.status, { 'content-type': problem ? 'application/problem+json' : 'application/json', ...reply.headers });
      res.end(reply.body === undefined ? '' : JSON.stringify(reply.body));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    received,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

const FAST: CommitdClientOptions['retry'] = { baseDelayMs: 1, maxDelayMs: 5, maxAttempts: 5 };
const committed = (key: string) => ({ key, state: 'committed', sessionId: 'ab'.repeat(16), stores: { audit: '01'.repeat(16), main: '02'.repeat(16) } });
const active = (key: string) => ({ key, state: 'active', recovery: false, stores: ['audit', 'main'] });
const problem = (status: number, code: string, detail = code) => ({
  status,
  body: { type: `https://commitd.dev/problems/${code}`, title: code, status, detail, code },
});
const route = (request: Received) => `${request.method} ${request.url}`;

describe('client retries (scripted server)', () => {
  const servers: { close(): Promise<void> }[] = [];
  const serve = async (answer: (request: Received, index: number) => Answer) => {
    const server = await scriptedServer(answer);
    servers.push(server);
    return server;
  };
  after(() => Promise.all(servers.map((server) => server.close())));

  it('resends a one-shot commit after a dropped connection, with the same key, and sends the token', async () => {
    const server = await serve((request, index) => (index === 0 ? 'reset' : { status: 200, body: committed((request.body as { key: string }).key) }));
    const client = new CommitdClient({ url: server.url, token: 's3cret', retry: FAST });
    const result = await client.commit('order-1', { main: [{ sql: 'INSERT INTO t VALUES (1)' }] });
    assert.equal(result.key, 'order-1');
    assert.equal(server.received.length, 2);
    assert.deepEqual(server.received[0]!.body, server.received[1]!.body);
    assert.deepEqual(server.received[1]!.body, { key: 'order-1', changes: { main: [{ sql: 'INSERT INTO t VALUES (1)' }] } });
    assert.equal(server.received[0]!.headers.authorization, 'Bearer s3cret');
  });

  it('generates a key when none is given and keeps it across retries', async () => {
    const server = await serve((request, index) =>
      index === 0 ? problem(503, 'unavailable') : { status: 200, body: committed((request.body as { key: string }).key) },
    );
    const client = new CommitdClient({ url: server.url, retry: FAST });
    const result = await client.commit({ main: [] });
    assert.match(result.key, new RegExp(KEY_PATTERN));
    assert.deepEqual(
      server.received.map((request) => (request.body as { key: string }).key),
      [result.key, result.key],
    );
  });

  it('waits out session_busy on commit, but never retries another refusal', async () => {
    const busy = await serve((_request, index) => (index < 2 ? problem(409, 'session_busy') : { status: 200, body: committed('k') }));
    assert.equal((await new CommitdClient({ url: busy.url, retry: FAST }).commit('k', { main: [] })).state, 'committed');
    assert.equal(busy.received.length, 3);

    const reused = await serve(() => problem(422, 'key_reused', 'key "k" was already used with other changes'));
    await assert.rejects(
      new CommitdClient({ url: reused.url, retry: FAST }).commit('k', { main: [] }),
      (error) => isApiError(error, 'key_reused') && error.status === 422,
    );
    assert.equal(reused.received.length, 1);
  });

  it('carries Retry-After on the error once attempts run out', async () => {
    const server = await serve(() => ({ ...problem(503, 'unavailable'), headers: { 'retry-after': '7' } }));
    const client = new CommitdClient({ url: server.url, retry: { maxAttempts: 1 } });
    await assert.rejects(client.listStores(), (error) => isApiError(error, 'unavailable') && error.retryAfterMs === 7_000);
  });

  it('reports a reply of the wrong shape as a protocol error', async () => {
    const server = await serve(() => ({ status: 200, body: { key: 'k', state: 'committed' } }));
    await assert.rejects(
      new CommitdClient({ url: server.url, retry: FAST }).commit('k', { main: [] }),
      (error) => error instanceof CommitdProtocolError && /sessionId/.test(error.message),
    );
  });

  it('does not resend an apply whose answer was lost: the handle turns uncertain and refuses to commit', async () => {
    const server = await serve((request) => {
      if (route(request) === 'POST /v1/sessions') return { status: 201, body: active('k') };
      if (route(request) === 'POST /v1/sessions/k/changes') return 'reset';
      return { status: 200, body: { key: 'k', state: 'cancelled' } };
    });
    const session = await new CommitdClient({ url: server.url, retry: FAST }).session('k');
    await assert.rejects(session.apply('main', [{ sql: 'x' }]), (error) => error instanceof CommitdUncertainError && error.store === 'main');
    assert.equal(session.state, 'uncertain');
    await assert.rejects(session.commit(), CommitdUncertainError);
    await assert.rejects(session.apply('main', [{ sql: 'y' }]), CommitdUncertainError);
    await session.cancel();
    assert.equal(session.state, 'cancelled');
    assert.deepEqual(server.received.map(route), ['POST /v1/sessions', 'POST /v1/sessions/k/changes', 'POST /v1/sessions/k/cancel']);
  });

  it('resends an apply that cannot have been received (connection refused)', async () => {
    const server = await serve((request) =>
      route(request) === 'POST /v1/sessions' ? { status: 201, body: active('k') } : { status: 200, body: { key: 'k', store: 'main', applied: 1 } },
    );
    let refused = false;
    const refuseFirstApply: typeof fetch = async (input, init) => {
      if (!refused && String(input).endsWith('/changes')) {
        refused = true;
        throw new TypeError('fetch failed', { cause: Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' }) });
      }
      return fetch(input, init);
    };
    const session = await new CommitdClient({ url: server.url, retry: FAST, fetch: refuseFirstApply }).session('k');
    assert.equal((await session.apply('main', [{ sql: 'x' }])).applied, 1);
    assert.ok(refused);
    assert.equal(server.received.filter((request) => route(request) === 'POST /v1/sessions/k/changes').length, 1);
  });

  it('a begin whose answer was lost, then refused as busy, is cancelled and begun afresh', async () => {
    let begins = 0;
    const server = await serve((request) => {
      if (route(request) === 'POST /v1/sessions') {
        begins++;
        if (begins === 1) return 'reset';
        if (begins === 2) return problem(409, 'session_busy');
        return { status: 201, body: active('k') };
      }
      return { status: 200, body: { key: 'k', state: 'cancelled' } };
    });
    const session = await new CommitdClient({ url: server.url, retry: FAST }).session('k', { stores: ['main'] });
    assert.equal(session.state, 'open');
    assert.deepEqual(server.received.map(route), ['POST /v1/sessions', 'POST /v1/sessions', 'POST /v1/sessions/k/cancel', 'POST /v1/sessions']);
    assert.deepEqual(server.received[0]!.body, { key: 'k', stores: ['main'] });
  });

  it('a busy key without a lost answer is reported, not taken over', async () => {
    const server = await serve(() => problem(409, 'session_busy'));
    await assert.rejects(new CommitdClient({ url: server.url, retry: FAST }).session('k'), (error) => isApiError(error, 'session_busy'));
    assert.equal(server.received.length, 1);
  });

  it('a resent cancel that finds nothing succeeded the first time', async () => {
    const server = await serve((_request, index) => (index === 0 ? 'reset' : problem(404, 'not_found')));
    assert.deepEqual(await new CommitdClient({ url: server.url, retry: FAST }).cancel('k'), { key: 'k', state: 'cancelled' });
    const strict = await serve(() => problem(404, 'not_found'));
    await assert.rejects(new CommitdClient({ url: strict.url, retry: FAST }).cancel('k'), (error) => isApiError(error, 'not_found'));
  });

  it('withSession redoes the work under the same key after an uncertain apply', async () => {
    let applies = 0;
    const server = await serve((request) => {
      switch (route(request)) {
        case 'POST /v1/sessions':
          return { status: 201, body: active('job-7') };
        case 'POST /v1/sessions/job-7/changes':
          return ++applies === 1 ? 'reset' : { status: 200, body: { key: 'job-7', store: 'main', applied: 1 } };
        case 'POST /v1/sessions/job-7/cancel':
          return { status: 200, body: { key: 'job-7', state: 'cancelled' } };
        default:
          return { status: 200, body: committed('job-7') };
      }
    });
    let runs = 0;
    const result = await new CommitdClient({ url: server.url, retry: FAST }).withSession('job-7', async (session) => {
      runs++;
      await session.apply('main', [{ sql: 'INSERT INTO t VALUES (7)' }]);
    });
    assert.equal(result.state, 'committed');
    assert.equal(runs, 2);
    assert.deepEqual(server.received.map(route), [
      'POST /v1/sessions',
      'POST /v1/sessions/job-7/changes',
      'POST /v1/sessions/job-7/cancel',
      'POST /v1/sessions',
      'POST /v1/sessions/job-7/changes',
      'POST /v1/sessions/job-7/commit',
    ]);
  });

  it('a key already committed replays: applies are skipped and commit returns the stored result', async () => {
    const server = await serve(() => ({ status: 200, body: committed('k') }));
    const session = await new CommitdClient({ url: server.url, retry: FAST }).session('k');
    assert.equal(session.state, 'replaying');
    assert.equal((await session.apply('main', [{ sql: 'x' }])).applied, 0);
    assert.deepEqual(await session.commit(), committed('k'));
    await assert.rejects(session.apply('main', []), SessionClosedError);
    assert.equal(server.received.length, 1);
  });

  it('an unreachable server is a network error that cannot have been received', async () => {
    const server = await serve(() => ({ status: 200, body: { stores: [] } }));
    const url = server.url;
    await server.close();
    await assert.rejects(new CommitdClient({ url, retry: { maxAttempts: 2, baseDelayMs: 1 } }).listStores(), (error) => {
      return error instanceof CommitdNetworkError && error.reason === 'ECONNREFUSED' && !error.mayHaveReachedServer;
    });
  });
});

// ---------------------------------------------------------------------------------------
// Against the real service: commitd in a child process, killed and restarted
// ---------------------------------------------------------------------------------------

/** A data dir with a config of two sqlite stores, `main` and `audit`, and their tables already there. */
function prepareDataDir(label: string): string {
  const dir = makeTempDir(label);
  const stores = ['main', 'audit'].map((name) => ({ name, type: 'sqlite', options: { path: join(dir, `${name}.db`) } }));
  writeFileSync(join(dir, 'commitd.json'), JSON.stringify({ stores }));
  for (const [name, table] of [
    ['main', 'orders'],
    ['audit', 'audit_log'],
  ] as const) {
    sqliteRun(join(dir, `${name}.db`), `CREATE TABLE ${table} (id TEXT PRIMARY KEY, note TEXT NOT NULL)`);
  }
  return dir;
}

/** Starts `src/main.ts` on `port` over `dir` and waits until it is ready. */
async function startCommitd(dir: string, port: number, extraEnv: CommitdEnv = {}): Promise<TrackedProcess> {
  const proc = await spawnCommitd({
    env: { COMMITD_PORT: String(port), COMMITD_DATA_DIR: dir, COMMITD_CONFIG: join(dir, 'commitd.json'), COMMITD_LOG_LEVEL: 'warn', ...extraEnv },
  });
  await proc.waitReady(async () => (await fetch(`http://127.0.0.1:${port}/readyz`)).ok, { timeoutMs: 30_000, what: 'commitd /readyz' });
  return proc;
}

/** How many rows of `table` in store `store` have `id`, read-only and from outside commitd. */
function rowsWithId(dir: string, store: string, table: string, id: string): number {
  return sqliteRows<{ n: number }>(join(dir, `${store}.db`), `SELECT COUNT(*) AS n FROM ${table} WHERE id = ?`, id)[0].n;
}

const orderChanges = (id: string) => ({
  main: [{ sql: 'INSERT INTO orders (id, note) VALUES (?, ?)', params: [id, 'order'] }],
  audit: [{ sql: 'INSERT INTO audit_log (id, note) VALUES (?, ?)', params: [id, 'audited'] }],
});

describe('client against a real commitd', () => {
  /** Patient enough to outlast a restart: the test restarts commitd while a commit retries. */
  const PATIENT: CommitdClientOptions['retry'] = { maxAttempts: 200, baseDelayMs: 50, maxDelayMs: 500, maxElapsedMs: 60_000 };

  it('a commit whose server is SIGKILLed after the first store committed is retried against the restarted server and lands once', async () => {
    const dir = prepareDataDir('client-crash');
    const port = await freePort();
    const url = `http://127.0.0.1:${port}`;
    let second: TrackedProcess | undefined;
    try {
      const first = await startCommitd(dir, port, { COMMITD_FAILPOINTS: 'commit.afterStore.1=crash' });
      const retries: RetryEvent[] = [];
      const client = new CommitdClient({ url, retry: PATIENT, onRetry: (event) => retries.push(event) });

      const pending = client.commit('order-1', orderChanges('order-1'));
      pending.catch(() => undefined); // awaited below; a failure must not surface as unhandled meanwhile
      const exit = await first.waitForExit(20_000);
      assert.equal(exit.signal, 'SIGKILL');
      // Stores commit in name order: the crash left `audit` committed and `main` not.
      assert.equal(rowsWithId(dir, 'audit', 'audit_log', 'order-1'), 1);
      assert.equal(rowsWithId(dir, 'main', 'orders', 'order-1'), 0);

      second = await startCommitd(dir, port);
      const result = await pending;
      assert.equal(result.key, 'order-1');
      assert.equal(result.state, 'committed');
      assert.match(result.sessionId, /^[0-9a-f]{32}$/);
      assert.deepEqual(Object.keys(result.stores).sort(), ['audit', 'main']);

      const [firstRetry] = retries;
      assert.ok(firstRetry, 'the client retried');
      assert.ok(firstRetry.error instanceof CommitdNetworkError && firstRetry.error.mayHaveReachedServer, 'the first failure was the lost answer of the crash');
      assert.ok(retries.every((event) => event.key === 'order-1' && event.operation === 'commit'));

      assert.equal(rowsWithId(dir, 'main', 'orders', 'order-1'), 1);
      assert.equal(rowsWithId(dir, 'audit', 'audit_log', 'order-1'), 1);

      // Retrying again (a worker that did not hear the answer) replays it, and writes nothing.
      assert.deepEqual(await client.commit('order-1', orderChanges('order-1')), result);
      assert.equal(rowsWithId(dir, 'main', 'orders', 'order-1'), 1);
      assert.equal(rowsWithId(dir, 'audit', 'audit_log', 'order-1'), 1);
    } finally {
      await second?.stop();
      await removeTempDir(dir);
    }
  });

  describe('sessions and typed errors', () => {
    let dir: string;
    let server: TrackedProcess;
    let client: CommitdClient;

    before(async () => {
      dir = prepareDataDir('client-api');
      const port = await freePort();
      server = await startCommitd(dir, port);
      client = new CommitdClient({ url: `http://127.0.0.1:${port}`, retry: FAST });
    });
    after(async () => {
      await server?.stop();
      if (dir) await removeTempDir(dir);
    });

    it('begins, applies, commits, and a second begin under the key replays the result', async () => {
      const session = await client.session('session-1');
      assert.equal(session.state, 'open');
      assert.equal(session.recovery, false);
      const changes = orderChanges('session-1');
      assert.deepEqual(await session.apply('main', changes.main), { key: 'session-1', store: 'main', applied: 1 });
      await session.apply('audit', changes.audit);
      const result = await session.commit();
      assert.equal(result.state, 'committed');
      assert.deepEqual(await client.get('session-1'), result);

      const again = await client.session('session-1');
      assert.equal(again.state, 'replaying');
      assert.equal((await again.apply('main', changes.main)).applied, 0);
      assert.equal((await again.commit()).sessionId, result.sessionId);
      assert.equal(rowsWithId(dir, 'main', 'orders', 'session-1'), 1);
    });

    it('withSession commits the work once', async () => {
      const changes = orderChanges('session-2');
      const result = await client.withSession('session-2', async (session) => {
        await session.apply('main', changes.main);
        await session.apply('audit', changes.audit);
      });
      assert.equal(result.key, 'session-2');
      assert.equal(rowsWithId(dir, 'audit', 'audit_log', 'session-2'), 1);
    });

    it('cancels an open session; a cancelled session is not found', async () => {
      const session = await client.session('session-3', { stores: ['main'] });
      assert.deepEqual(
        (await client.listSessions({ state: 'active' })).map((view) => view.key),
        ['session-3'],
      );
      await session.cancel();
      assert.equal(session.state, 'cancelled');
      assert.equal(await client.get('session-3'), undefined);
      await assert.rejects(client.cancel('session-3'), (error) => isApiError(error, 'not_found') && error.status === 404);
    });

    it('refusals arrive typed by their contract code', async () => {
      await assert.rejects(client.session('not a key!'), (error) => isApiError(error, 'invalid_request') && error.status === 400);
      await assert.rejects(client.session('session-4', { stores: ['nosuch'] }), (error) => isApiError(error, 'invalid_request'));
      const session = await client.session('session-5', { stores: ['main'] });
      await assert.rejects(session.apply('main', [{ sql: 'INSERT INTO nosuch VALUES (1)' }]), (error) => {
        return isApiError(error, 'store_conflict') && error.status === 409 && error.problem.store === 'main';
      });
      await session.cancel();
    });

    it('pages through committed sessions, newest first', async () => {
      const first = await client.listSessionsPage({ state: 'committed', limit: 1 });
      assert.deepEqual(
        first.sessions.map((view) => view.key),
        ['session-2'],
      );
      assert.ok(first.nextCursor);
      const second = await client.listSessionsPage({ state: 'committed', limit: 1, cursor: first.nextCursor });
      assert.deepEqual(
        second.sessions.map((view) => view.key),
        ['session-1'],
      );
      assert.equal(second.nextCursor, undefined);
      assert.deepEqual(
        (await client.listSessions({ state: 'committed' })).map((view) => view.key),
        ['session-2', 'session-1'],
      );
    });

    it('lists the configured stores', async () => {
      assert.deepEqual(
        (await client.listStores()).sort((a, b) => a.name.localeCompare(b.name)).map(({ name, type, origin }) => ({ name, type, origin })),
        [
          { name: 'audit', type: 'sqlite', origin: 'config' },
          { name: 'main', type: 'sqlite', origin: 'config' },
        ],
      );
    });
  });
});

/**
 * Two commitd instances on one etcd and the same sqlite store files (lease TTL 2 s,
 * recovery every 500 ms). An instance killed or frozen past its commit point is replaced by
 * the other, and every session still commits exactly once with the session ID its changes
 * define; a key held by a live instance is `session_busy` on the other one.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import { Etcd3 } from 'etcd3';
import { sessionIdOfChanges } from '../src/core/session-id.ts';
import { makeTempDir, removeTempDir } from './harness/child.ts';
import { postgresBinDir, startPostgres, type PostgresServer } from './harness/postgres.ts';
import { skipUnlessFound } from './harness/require.ts';
import { startProcess, type ProcessService, type ProcessServiceOptions } from './support/process.ts';
import { kvNeeds, sharedEtcdServer, sqliteStores } from './support/service.ts';
import { waitFor } from './support/wait.ts';
import { countRows, postgresRows, sqliteRun } from './support/rows.ts';

const LEASE_TTL_MS = 2000;
const RECOVERY_INTERVAL_MS = 500;
/** Slack over TTL + interval for a shared 2-core machine (process start-up, etcd's expiry tick). */
const ADOPTION_SLACK_MS = 6000;

type Changes = Record<string, unknown[]>;
type Answer = { status: number; body: Record<string, unknown> };

const insert = (key: string, n: number) => ({ sql: 'INSERT INTO t(k, n) VALUES (?, ?)', params: [key, n] });

/** Waits (asking B) until A's session under `key` is past its commit point, then SIGSTOPs A. */
async function freezeAfterCommitPoint(a: ProcessService, b: ProcessService, key: string): Promise<void> {
  await waitFor(
    `${key} past its commit point on A`,
    async () => {
      const shown = await b.request('GET', `/v1/sessions/${key}`);
      return shown.body.state === 'committing' ? true : undefined;
    },
    { intervalMs: 20 },
  );
  a.process.pause();
}

/** Every answer either instance gave: only 2xx, 4xx and 503 are allowed. */
function assertNoServerErrors(answers: readonly Answer[]): void {
  for (const answer of answers) {
    assert.ok(answer.status < 500 || answer.status === 503, `a ${answer.status} answer: ${JSON.stringify(answer.body)}`);
  }
}

async function runSession(instance: ProcessService, mode: 'one-shot' | 'interactive', key: string, changes: Changes): Promise<Answer> {
  if (mode === 'one-shot') return instance.request('POST', '/v1/commits', { key, changes });
  const begun = await instance.request('POST', '/v1/sessions', { key, stores: Object.keys(changes) });
  assert.equal(begun.status, 201, JSON.stringify(begun.body));
  for (const [store, list] of Object.entries(changes)) {
    const applied = await instance.request('POST', `/v1/sessions/${key}/changes`, { store, changes: list });
    assert.equal(applied.status, 200, JSON.stringify(applied.body));
  }
  return instance.request('POST', `/v1/sessions/${key}/commit`);
}

describe('two instances on one etcd', { skip: skipUnlessFound(kvNeeds('etcd')) }, () => {
  const root = makeTempDir('multi');
  const started: ProcessService[] = [];
  let endpoints: readonly string[] = [];

  before(async () => {
    endpoints = (await sharedEtcdServer()).endpoints;
  });
  after(async () => {
    await Promise.all(started.map((instance) => instance.process.kill('SIGKILL').catch(() => undefined)));
    await removeTempDir(root);
  });

  /** Stores s1, s2 (table t) shared by both instances; A gets `failpointsA`. */
  async function startPair(name: string, failpointsA?: string, stores = sqliteStores(join(root, name, 'stores'), ['s1', 's2'])) {
    const dir = join(root, name);
    for (const sub of ['a', 'b', 'stores']) mkdirSync(join(dir, sub), { recursive: true });
    for (const { type, options } of stores) {
      if (type !== 'sqlite') continue;
      sqliteRun((options as { path: string }).path, 'CREATE TABLE IF NOT EXISTS t(k TEXT, n INTEGER)');
    }
    const namespace = `/multi-${randomUUID()}/`;
    const base = { stores, etcd: { endpoints, namespace } };
    const config = (instanceId: string) => ({ instanceId, leaseTtl: `${LEASE_TTL_MS / 1000}s`, recoveryInterval: `${RECOVERY_INTERVAL_MS}ms` });
    const optionsA: ProcessServiceOptions = { ...base, dir: join(dir, 'a'), config: config('inst-a') };
    const optionsB: ProcessServiceOptions = { ...base, dir: join(dir, 'b'), config: config('inst-b') };
    const a = await startProcess(optionsA, failpointsA);
    started.push(a);
    const b = await startProcess(optionsB);
    started.push(b);
    const path = (store: string) => (stores.find((s) => s.name === store)?.options as { path: string } | undefined)?.path ?? '';
    return { a, b, path, namespace };
  }

  it('B finishes the committing sessions of a SIGKILLed A within lease TTL + recovery interval, each once', async (t) => {
    const { a, b, path } = await startPair('kill', 'commit.afterStore.1=delay(60000)');
    // Three one-shot sessions on s1 only (A stalls after committing s1, holding nothing), and
    // an interactive one on s1+s2: A stalls after s1 while its prepared s2 transaction holds
    // s2's write lock, released by the kernel when A dies.
    const sessions: { key: string; mode: 'one-shot' | 'interactive'; changes: Changes }[] = [
      ...[1, 2, 3].map((i) => ({ key: `kill-${i}`, mode: 'one-shot' as const, changes: { s1: [insert(`kill-${i}`, i)] } })),
      { key: 'kill-4', mode: 'interactive', changes: { s1: [insert('kill-4', 1)], s2: [insert('kill-4', 2)] } },
    ];
    const onA = sessions.map(({ key, mode, changes }) =>
      runSession(a, mode, key, changes).then(
        (answer) => ({ answer }),
        (error: unknown) => ({ error }),
      ),
    );

    for (const { key } of sessions) {
      await waitFor(`${key} past its commit point on A, s1 committed`, async () => {
        const shown = await b.request('GET', `/v1/sessions/${key}`);
        return shown.body.state === 'committing' && shown.body.owner === 'inst-a' && countRows(path('s1'), key) === 1 ? true : undefined;
      });
    }
    assert.equal(countRows(path('s2'), 'kill-4'), 0, 'A stalls before committing s2');

    await a.process.kill('SIGKILL');
    const killedAt = Date.now();
    const answers: Answer[] = [];
    for (const { key, changes } of sessions) {
      const shown = await waitFor(
        `${key} committed by B`,
        async () => {
          const answer = await b.request('GET', `/v1/sessions/${key}`);
          answers.push(answer);
          return answer.body.state === 'committed' ? answer : undefined;
        },
        { timeoutMs: 30_000, intervalMs: 50 },
      );
      assert.equal(shown.body.sessionId, sessionIdOfChanges(changes), `${key}: the session ID its changes define`);
    }
    const elapsed = Date.now() - killedAt;
    t.diagnostic(`B finished A's ${sessions.length} sessions ${elapsed} ms after the SIGKILL`);
    assert.ok(elapsed <= LEASE_TTL_MS + RECOVERY_INTERVAL_MS + ADOPTION_SLACK_MS, `B took ${elapsed} ms to finish A's sessions`);
    assertNoServerErrors(answers);

    for (const { key, changes } of sessions) {
      for (const store of Object.keys(changes)) assert.equal(countRows(path(store), key), 1, `${key} in ${store} exactly once`);
      const replay = await b.request('POST', '/v1/commits', { key, changes });
      assert.equal(replay.status, 200, JSON.stringify(replay.body));
      assert.equal(replay.body.sessionId, sessionIdOfChanges(changes), 'a retry on B answers the same result');
    }
    for (const outcome of await Promise.all(onA)) assert.ok('error' in outcome, 'requests to A die with it');
    const metrics = await (await fetch(`${b.url}/metrics`)).text();
    const recovered = Number(/^commitd_sessions_recovered_total\{outcome="committed"\} (\d+)/m.exec(metrics)?.[1] ?? 0);
    assert.equal(recovered, sessions.length, 'B counts each roll-forward');
  });

  /**
   * A is frozen (SIGSTOP) inside `commit.afterIntent=delay(3000)`: past its commit point,
   * with its prepared sqlite transactions holding both stores' write locks. Its lease expires
   * and B adopts the session, but B cannot commit while A's locks are held: SQLite's lock
   * belongs to the frozen process and cannot be broken from outside. B's roll-forward fails
   * with STORE_BUSY (a passing condition, retried each recovery pass) and requests about the
   * key on B get 409 or 503. On SIGCONT A's overdue lease-expiry timer fires before its
   * (later) failpoint timer: A stops driving the session and rolls its transactions back
   * (its request answers 503 "past its commit point and will complete");
   * B's next pass commits. Exactly-once does not depend on that order: had A committed
   * first, B's prepare would have met A's marker and skipped (the next test).
   */
  it('A frozen past its lease after its commit point: B adopts, commits once A lets go; no double apply, no 500', async (t) => {
    await frozenAfterCommitPoint(t, 'freeze-3000', 3000);
  });

  /**
   * As above with `delay(1000)`: the failpoint timer is now due before A's own lease-expiry
   * timer, so on SIGCONT A often commits its stores first (its own markers, under its locks);
   * B's roll-forward then meets those markers and skips, and A's result write fails on B's
   * adoption (503) or finds B's identical result (200). Which of A's overdue callbacks runs
   * first is not guaranteed (etcd3 reports the lost lease too); the invariants are the same.
   */
  it('A frozen briefly past its commit point, resumed: A commits, B skips on the marker; no double apply, no 500', async (t) => {
    await frozenAfterCommitPoint(t, 'freeze-1000', 1000);
  });

  async function frozenAfterCommitPoint(t: TestContext, name: string, delayMs: number): Promise<void> {
    const { a, b, path, namespace } = await startPair(name, `commit.afterIntent=delay(${delayMs})`);
    const key = `${name}-1`;
    const changes = { s1: [insert(key, 1)], s2: [insert(key, 2)] };
    const answers: Answer[] = [];
    const rows = () => countRows(path('s1'), key) + countRows(path('s2'), key);
    const onA = a.request('POST', '/v1/commits', { key, changes });

    await freezeAfterCommitPoint(a, b, key);
    const frozenAt = Date.now();
    // On a busy machine the freeze may land after A's delay ran out and A committed a store
    // or both: what A committed before the freeze is its own, and B must add nothing to it.
    const rowsAtFreeze = rows();
    const etcd = new Etcd3({ hosts: [...endpoints] });
    try {
      const adopted = await waitFor(
        `B to adopt ${key} (or see it committed)`,
        async () => {
          const shown = await b.request('GET', `/v1/sessions/${key}`);
          answers.push(shown);
          return shown.body.owner === 'inst-b' || shown.body.state === 'committed' ? shown : undefined;
        },
        { timeoutMs: 30_000 },
      );
      if (adopted.body.state !== 'committed') {
        const adoptedAfterMs = Date.now() - frozenAt;
        // B adopts only once A's lease is gone: A's instance key, attached to it, is gone too
        // (and a frozen A cannot register again).
        assert.equal(await etcd.get(`${namespace}instances/inst-a`).string(), null, "B adopted while A's lease was valid");
        // A worker retrying on B meanwhile is told to come back (busy or unavailable), never 500.
        const retried = await b.request('POST', '/v1/commits', { key, changes });
        answers.push(retried);
        assert.ok([409, 503].includes(retried.status) || retried.status === 200, JSON.stringify(retried.body));
        if (retried.status === 503) assert.ok(retried.headers.get('retry-after'), '503 carries Retry-After');
        t.diagnostic(
          `B adopted ${adoptedAfterMs} ms into the freeze (A had committed ${rowsAtFreeze} of 2 rows); a retry on B got ${retried.status} ${String(retried.body.code ?? '')}`,
        );
        assert.equal(rows(), rowsAtFreeze, 'B commits nothing while A holds the locks');
      }
    } finally {
      a.process.resume();
      etcd.close();
    }

    const fromA = await onA;
    answers.push(fromA);
    assert.ok(fromA.status === 200 || fromA.status === 503, `A answers ${fromA.status}: ${JSON.stringify(fromA.body)}`);
    if (fromA.status === 200) assert.equal(fromA.body.sessionId, sessionIdOfChanges(changes));
    t.diagnostic(`A answered ${fromA.status}: ${String(fromA.body.detail ?? fromA.body.state)}`);

    for (const instance of [b, a]) {
      const shown = await waitFor(
        `${key} committed, seen from ${instance.url}`,
        async () => {
          const answer = await instance.request('GET', `/v1/sessions/${key}`);
          answers.push(answer);
          return answer.body.state === 'committed' ? answer : undefined;
        },
        { timeoutMs: 30_000 },
      );
      assert.equal(shown.body.sessionId, sessionIdOfChanges(changes));
    }
    assert.equal(countRows(path('s1'), key), 1, 's1 holds the row once');
    assert.equal(countRows(path('s2'), key), 1, 's2 holds the row once');
    for (const instance of [a, b]) {
      const replay = await instance.request('POST', '/v1/commits', { key, changes });
      answers.push(replay);
      assert.equal(replay.body.sessionId, sessionIdOfChanges(changes));
    }
    assertNoServerErrors(answers);
  }

  it('a key held by live A is session_busy on B, naming A', async () => {
    const { a, b } = await startPair('busy');
    const key = 'busy-1';
    const begun = await a.request('POST', '/v1/sessions', { key, stores: ['s1'] });
    assert.equal(begun.status, 201, JSON.stringify(begun.body));

    const attempts: [string, string, unknown?][] = [
      ['POST', '/v1/sessions', { key, stores: ['s1'] }],
      ['POST', `/v1/sessions/${key}/changes`, { store: 's1', changes: [insert(key, 1)] }],
      ['POST', `/v1/sessions/${key}/commit`],
      ['POST', `/v1/sessions/${key}/cancel`],
    ];
    for (const [method, route, body] of attempts) {
      const answer = await b.request(method, route, body);
      assert.equal(answer.status, 409, `${route}: ${JSON.stringify(answer.body)}`);
      assert.equal(answer.body.code, 'session_busy');
      assert.match(String(answer.body.detail), /inst-a/, `${route}: the detail names the holder`);
    }
    const shown = await b.request('GET', `/v1/sessions/${key}`);
    assert.equal(shown.body.state, 'active');
    assert.equal(shown.body.owner, 'inst-a');

    // A still drives it: the session commits there, and B then answers the result.
    assert.equal((await a.request('POST', `/v1/sessions/${key}/changes`, { store: 's1', changes: [insert(key, 1)] })).status, 200);
    const committed = await a.request('POST', `/v1/sessions/${key}/commit`);
    assert.equal(committed.status, 200, JSON.stringify(committed.body));
    const replay = await b.request('POST', '/v1/sessions', { key, stores: ['s1'] });
    assert.equal(replay.status, 200);
    assert.equal(replay.body.state, 'committed');
  });

  /**
   * PostgreSQL variant of the freeze: A's session holds a transaction with the marker and
   * row locks; the server ends it after `idleInTransactionTimeoutMs` of idleness, so B adopts
   * and commits while A is still frozen. On SIGCONT A's transaction is gone: it answers 503
   * (or 200 if B's identical result is already there), never a second apply.
   */
  it('PostgreSQL: a frozen A does not stall B (idle transactions are bounded)', {
    skip: skipUnlessFound({ PostgreSQL: postgresBinDir() }),
  }, async (t: TestContext) => {
    const server: PostgresServer = await startPostgres();
    try {
      await postgresRows(server.connectionString, 'CREATE TABLE t(k TEXT, n INTEGER)');
      const stores = [{ name: 'pg', type: 'postgres', options: { connectionString: server.connectionString, idleInTransactionTimeoutMs: 500, poolSize: 4 } }];
      const { a, b } = await startPair('pg', 'commit.afterIntent=delay(3000)', stores);
      const key = 'pg-1';
      // A's prepared transaction (rows + marker) idles in the failpoint, then in the freeze.
      const changes = { pg: [{ sql: 'INSERT INTO t(k, n) VALUES ($1, $2)', params: [key, 1] }] };
      const answers: Answer[] = [];
      const onA = a.request('POST', '/v1/commits', { key, changes });
      await freezeAfterCommitPoint(a, b, key);
      try {
        const shown = await waitFor(
          `B to commit ${key} while A is frozen`,
          async () => {
            const answer = await b.request('GET', `/v1/sessions/${key}`);
            answers.push(answer);
            return answer.body.state === 'committed' ? answer : undefined;
          },
          { timeoutMs: 30_000 },
        );
        assert.equal(shown.body.sessionId, sessionIdOfChanges(changes));
      } finally {
        a.process.resume();
      }
      const fromA = await onA;
      answers.push(fromA);
      t.diagnostic(`A answered ${fromA.status}: ${String(fromA.body.detail ?? fromA.body.state)}`);
      assert.ok(fromA.status === 200 || fromA.status === 503, `A answers ${fromA.status}: ${JSON.stringify(fromA.body)}`);
      const rows = await postgresRows<{ n: string }>(server.connectionString, 'SELECT count(*) AS n FROM t WHERE k = $1', [key]);
      assert.equal(Number(rows[0]?.n), 1, 'the row is there once');
      const replay = await a.request('POST', '/v1/commits', { key, changes });
      answers.push(replay);
      // A lost its lease in the freeze and may still be registering again: the result is in
      // the KV, and it answers from there.
      assert.equal(replay.body.sessionId, sessionIdOfChanges(changes), `the replay on A: ${replay.status} ${JSON.stringify(replay.body)}`);
      assertNoServerErrors(answers);
    } finally {
      await server.cleanup();
    }
  });
});

/**
 * Failed sessions, produced on purpose: commitd dies right after the commit point
 * (`commit.afterIntent=crash`), and while it is down another writer takes the primary key
 * the session inserts. Roll-forward is then rejected: the session turns `failed`, shows in
 * GET, in `GET /v1/sessions?state=failed` and in /metrics, and waits for an operator, who
 * abandons it or — once the conflicting row is gone — retries it to a single commit.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { sessionIdOfChanges } from '../src/core/session-id.ts';
import { makeTempDir, removeTempDir } from './harness/child.ts';
import { skipUnlessFound } from './harness/require.ts';
import { startProcess, type ProcessService, type ProcessServiceOptions } from './support/process.ts';
import { countRows, sqliteRows, sqliteRun } from './support/rows.ts';
import { KV_BACKENDS, kvNeeds, sharedEtcdServer, sqliteStores } from './support/service.ts';

/** s1 takes a plain row; s2 inserts `id` into a table whose primary key another writer can take first. */
function changesFor(key: string, id: number) {
  return {
    s1: [{ sql: 'INSERT INTO t(k, n) VALUES (?, ?)', params: [key, id] }],
    s2: [{ sql: 'INSERT INTO p(id, note) VALUES (?, ?)', params: [id, key] }],
  };
}

function metricValue(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

for (const kv of KV_BACKENDS) {
  describe(`failed sessions (${kv} KV)`, { skip: skipUnlessFound(kvNeeds(kv)) }, () => {
    const dir = makeTempDir('failed');
    const stores = sqliteStores(dir, ['s1', 's2']);
    const [s1Path, s2Path] = stores.map((s) => (s.options as { path: string }).path) as [string, string];
    let options: ProcessServiceOptions;
    let service: ProcessService | undefined;

    before(async () => {
      mkdirSync(dir, { recursive: true });
      sqliteRun(s1Path, 'CREATE TABLE t(k TEXT, n INTEGER)');
      sqliteRun(s2Path, 'CREATE TABLE p(id INTEGER PRIMARY KEY, note TEXT)');
      const etcd = kv === 'etcd' ? { endpoints: (await sharedEtcdServer()).endpoints, namespace: `/failed-${randomUUID()}/` } : undefined;
      options = { dir, stores, etcd };
    });
    after(async () => {
      await service?.process.kill('SIGKILL');
      await removeTempDir(dir);
    });

    /** Commits `key` on a commitd that dies at its commit point; then an intruder takes the id. */
    async function crashAtCommitPoint(key: string, id: number): Promise<void> {
      const doomed = await startProcess(options, 'commit.afterIntent=crash');
      await assert.rejects(doomed.request('POST', '/v1/commits', { key, changes: changesFor(key, id) }), 'the request dies with the process');
      assert.equal((await doomed.process.waitForExit(20_000)).signal, 'SIGKILL');
      sqliteRun(s2Path, 'INSERT INTO p(id, note) VALUES (?, ?)', id, 'intruder');
    }

    it('a roll-forward rejected by a store leaves the session failed, listed and counted', async () => {
      await crashAtCommitPoint('f-abandon', 7);
      await crashAtCommitPoint('f-retry', 8); // this start-up's recovery already fails f-abandon
      service = await startProcess(options);

      for (const [key, id] of [
        ['f-abandon', 7],
        ['f-retry', 8],
      ] as const) {
        const shown = await service.request('GET', `/v1/sessions/${key}`);
        assert.equal(shown.status, 200, JSON.stringify(shown.body));
        assert.equal(shown.body.state, 'failed');
        assert.match(String(shown.body.error), /UNIQUE|PRIMARY KEY|constraint/i, 'the error says what the store rejected');
        assert.equal(shown.body.sessionId, sessionIdOfChanges(changesFor(key, id)), 'the log is kept: its session ID is shown');
      }
      assert.deepEqual(sqliteRows(s1Path, 'SELECT count(*) AS n FROM t'), [{ n: 0 }], 'no store committed any part');

      const before = await (await fetch(`${service.url}/metrics`)).text();
      assert.equal(metricValue(before, 'commitd_sessions_recovered_total{outcome="failed"}'), 1, 'this run failed one roll-forward (f-retry)');
      assert.equal(metricValue(before, 'commitd_sessions_failed'), 2, 'the gauge reads the KV at each scrape: nobody listed anything yet');

      const listed = await service.request('GET', '/v1/sessions?state=failed');
      assert.equal(listed.status, 200);
      const keys = (listed.body.sessions as { key: string; state: string }[]).map((s) => s.key).sort();
      assert.deepEqual(keys, ['f-abandon', 'f-retry']);

      // A worker retrying the key is told the session awaits an operator: a conflict, not a 500.
      const retried = await service.request('POST', '/v1/commits', { key: 'f-retry', changes: changesFor('f-retry', 8) });
      assert.equal(retried.status, 409, JSON.stringify(retried.body));
      // Recovery passes leave failed sessions alone.
      assert.equal((await service.request('GET', '/v1/sessions/f-retry')).body.state, 'failed');
    });

    it('abandon drops a failed session with its log', async () => {
      assert.ok(service);
      // Operators at once: one abandons it, the others are told it is gone or changed (never 500).
      const answers = await Promise.all(
        Array.from({ length: 8 }, () => (service as ProcessService).request('POST', '/v1/sessions/f-abandon/resolve', { action: 'abandon' })),
      );
      const abandoned = answers.find((answer) => answer.status === 200);
      assert.ok(abandoned, JSON.stringify(answers.map((a) => a.body)));
      assert.deepEqual(abandoned.body, { key: 'f-abandon', state: 'abandoned' });
      const afterAbandon = await (await fetch(`${service.url}/metrics`)).text();
      assert.equal(metricValue(afterAbandon, 'commitd_sessions_failed'), 1, 'the gauge follows the abandon without a listing');
      assert.equal(metricValue(afterAbandon, 'commitd_sessions_resolved_total{action="abandon",outcome="abandoned"}'), 1);
      for (const other of answers.filter((answer) => answer !== abandoned)) {
        assert.ok([404, 409].includes(other.status), `another operator: ${other.status} ${JSON.stringify(other.body)}`);
      }
      assert.equal((await service.request('GET', '/v1/sessions/f-abandon')).status, 404);
      const listed = await service.request('GET', '/v1/sessions?state=failed');
      assert.deepEqual(
        (listed.body.sessions as { key: string }[]).map((s) => s.key),
        ['f-retry'],
      );
      const metrics = await (await fetch(`${service.url}/metrics`)).text();
      assert.equal(metricValue(metrics, 'commitd_sessions_failed'), 1);
      assert.equal((await service.request('POST', '/v1/sessions/f-abandon/resolve', { action: 'abandon' })).status, 404, 'gone');
      assert.deepEqual(sqliteRows(s2Path, 'SELECT note FROM p WHERE id = 7'), [{ note: 'intruder' }]);
    });

    it('retry rolls forward again: still failed while the conflict stands, committed once it is gone', async () => {
      assert.ok(service);
      const stillFailing = await service.request('POST', '/v1/sessions/f-retry/resolve', { action: 'retry' });
      assert.equal(stillFailing.status, 409, JSON.stringify(stillFailing.body));
      assert.equal(stillFailing.body.code, 'store_conflict');
      assert.match(String(stillFailing.body.detail), /^session "f-retry" failed and awaits an operator \(retry or abandon\): .*UNIQUE/);
      assert.equal(stillFailing.body.store, undefined, 'no made-up store name');
      assert.equal((await service.request('GET', '/v1/sessions/f-retry')).body.state, 'failed');

      sqliteRun(s2Path, "DELETE FROM p WHERE id = 8 AND note = 'intruder'");
      // Operators at once: one rolls it forward; the others get the result or a 409 (never 500).
      const answers = await Promise.all(
        Array.from({ length: 8 }, () => (service as ProcessService).request('POST', '/v1/sessions/f-retry/resolve', { action: 'retry' })),
      );
      for (const answer of answers) assert.ok([200, 409].includes(answer.status), JSON.stringify(answer.body));
      const resolved = answers.find((answer) => answer.status === 200);
      assert.ok(resolved, JSON.stringify(answers.map((a) => a.body)));
      assert.equal(resolved.body.state, 'committed');
      const expected = sessionIdOfChanges(changesFor('f-retry', 8));
      assert.equal(resolved.body.sessionId, expected);

      const shown = await service.request('GET', '/v1/sessions/f-retry');
      assert.equal(shown.body.state, 'committed');
      assert.equal(shown.body.sessionId, expected);
      assert.equal(countRows(s1Path, 'f-retry'), 1);
      assert.deepEqual(sqliteRows(s2Path, 'SELECT note FROM p WHERE id = 8'), [{ note: 'f-retry' }]);

      const replay = await service.request('POST', '/v1/commits', { key: 'f-retry', changes: changesFor('f-retry', 8) });
      assert.equal(replay.status, 200);
      assert.equal(replay.body.sessionId, expected, 'the worker now gets the committed result');
      const listed = await service.request('GET', '/v1/sessions?state=failed');
      assert.deepEqual(listed.body.sessions, []);
      const metrics = await (await fetch(`${service.url}/metrics`)).text();
      assert.equal(metricValue(metrics, 'commitd_sessions_failed'), 0);
      assert.equal(metricValue(metrics, 'commitd_sessions_recovered_total{outcome="failed"}'), 1, 'operator retries that fail again are not counted again');
      assert.equal(metricValue(metrics, 'commitd_sessions_recovered_total{outcome="committed"}'), undefined, "the operator's retry is not a recovery");
      assert.equal(metricValue(metrics, 'commitd_sessions_resolved_total{action="retry",outcome="committed"}'), 1);
      assert.ok((metricValue(metrics, 'commitd_sessions_resolved_total{action="retry",outcome="failed"}') ?? 0) >= 1);
      assert.equal(
        (await service.request('POST', '/v1/sessions/f-retry/resolve', { action: 'abandon' })).body.state,
        'committed',
        'a committed key answers its result',
      );
    });
  });
}

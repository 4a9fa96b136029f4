/**
 * etcd faults: the ordering guard of serializable reads (unit, and against a 3-member
 * cluster with a member frozen behind the others), a single etcd SIGKILLed and restarted
 * under load, and the leader of a 3-member cluster killed under load. Throughout: no
 * acknowledged commit is lost or applied twice, an outage answers 503 with Retry-After
 * (never 500), and commitd recovers by itself.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { EtcdKv } from '../src/kv/etcd.ts';
import { RevisionFloor, orderedRead, type RevisionedResponse } from '../src/kv/etcd-ordering.ts';
import { sessionIdOfChanges } from '../src/core/session-id.ts';
import { makeTempDir, removeTempDir } from './harness/child.ts';
import { startEtcd, startEtcdCluster, type EtcdCluster, type EtcdServer } from './harness/etcd.ts';
import { skipUnlessFound } from './harness/require.ts';
import { startProcess, type ProcessService } from './support/process.ts';
import { kvNeeds, sqliteStores } from './support/service.ts';
import { waitFor } from './support/wait.ts';
import { countRows, sqliteRun } from './support/rows.ts';

const response = (revision: number, tag = ''): RevisionedResponse & { tag: string } => ({ header: { revision: String(revision) }, tag });

describe('ordering guard (unit)', () => {
  it('remembers the highest revision seen and flags older ones', () => {
    const floor = new RevisionFloor();
    assert.equal(floor.highest, 0);
    assert.equal(floor.observe(response(5)), false);
    assert.equal(floor.observe(response(5)), false, 'the same revision is not stale');
    assert.equal(floor.observe(response(3)), true, 'older than seen: stale');
    assert.equal(floor.highest, 5, 'a stale response never lowers the floor');
    assert.equal(floor.observe(response(9)), false);
    assert.equal(floor.highest, 9);
  });

  it('uses a fresh serializable answer and never calls the linearizable read', async () => {
    const floor = new RevisionFloor();
    floor.observe(response(10));
    let linearizableCalls = 0;
    const answer = await orderedRead(
      floor,
      async () => response(10, 'serializable'),
      async () => {
        linearizableCalls++;
        return response(11, 'linearizable');
      },
    );
    assert.equal(answer.tag, 'serializable');
    assert.equal(linearizableCalls, 0);
  });

  it('drops a stale serializable answer, reports it, and answers with the linearizable read', async () => {
    const floor = new RevisionFloor();
    floor.observe(response(10));
    const stale: [number, number][] = [];
    const answer = await orderedRead(
      floor,
      async () => response(7, 'serializable'),
      async () => response(12, 'linearizable'),
      (revision, seen) => stale.push([revision, seen]),
    );
    assert.equal(answer.tag, 'linearizable');
    assert.deepEqual(stale, [[7, 10]]);
    assert.equal(floor.highest, 12, 'the linearizable answer raises the floor');
  });

  it('judges an answer against the floor when its read was sent, not against answers that raced it', async () => {
    const floor = new RevisionFloor();
    floor.observe(response(10));
    const answer = await orderedRead(
      floor,
      async () => {
        floor.observe(response(15)); // a write answered while this read was in flight
        return response(12, 'serializable');
      },
      async () => response(16, 'linearizable'),
    );
    assert.equal(answer.tag, 'serializable', 'revision 12 is not older than the 10 seen when the read was sent');
    assert.equal(floor.highest, 15);
  });

  it('leaves errors of either read to the caller', async () => {
    const floor = new RevisionFloor();
    floor.observe(response(10));
    await assert.rejects(
      orderedRead(
        floor,
        async () => response(1),
        async () => Promise.reject(new Error('etcd down')),
      ),
      /etcd down/,
    );
  });
});

type Answer = { status: number; body: Record<string, unknown>; retryAfter: string | null };

/** Two sqlite stores with table t(k, n), and commitd on `endpoints`. */
async function startCommitd(root: string, name: string, endpoints: readonly string[]): Promise<{ service: ProcessService; paths: string[] }> {
  const dir = join(root, name);
  mkdirSync(dir, { recursive: true });
  const stores = sqliteStores(dir, ['s1', 's2']);
  const paths = stores.map((store) => (store.options as { path: string }).path);
  for (const path of paths) sqliteRun(path, 'CREATE TABLE t(k TEXT, n INTEGER)');
  const service = await startProcess({ dir, stores, etcd: { endpoints, namespace: `/faults-${randomUUID()}/` } });
  return { service, paths };
}

const changesFor = (key: string) => ({
  s1: [{ sql: 'INSERT INTO t(k, n) VALUES (?, ?)', params: [key, 1] }],
  s2: [{ sql: 'INSERT INTO t(k, n) VALUES (?, ?)', params: [key, 2] }],
});

/**
 * Closed-loop one-shot commits from `workers` workers until `stop()`: each worker retries
 * its key (same changes) until it is acknowledged, then takes the next one.
 */
function startLoad(service: ProcessService, workers: number, label: string) {
  const answers: (Answer & { at: number })[] = [];
  const acknowledged: { key: string; at: number }[] = [];
  const attempted = new Set<string>();
  const dropped: string[] = [];
  let running = true;
  const worker = async (w: number) => {
    for (let n = 0; running; n++) {
      const key = `${label}-${w}-${n}`;
      attempted.add(key);
      while (running) {
        let answer: Answer;
        try {
          const res = await fetch(`${service.url}/v1/commits`, {
            method: 'POST',
            headers: { 'content-type': 'application/json' },
            body: JSON.stringify({ key, changes: changesFor(key) }),
            signal: AbortSignal.timeout(30_000),
          });
          answer = { status: res.status, body: (await res.json()) as Record<string, unknown>, retryAfter: res.headers.get('retry-after') };
        } catch (err) {
          dropped.push(`${key}: ${err instanceof Error ? err.message : String(err)}`);
          await sleep(200);
          continue;
        }
        answers.push({ ...answer, at: Date.now() });
        if (answer.status === 200) {
          acknowledged.push({ key, at: Date.now() });
          break;
        }
        await sleep(answer.status === 503 ? 200 : 50);
      }
    }
  };
  const done = Promise.all(Array.from({ length: workers }, (_, w) => worker(w)));
  return {
    answers,
    acknowledged,
    attempted,
    dropped,
    acksSince: (at: number) => acknowledged.filter((ack) => ack.at > at).length,
    async stop() {
      running = false;
      await done;
    },
  };
}

/** Every acknowledged key is committed with its session ID and its rows exist once; nothing is doubled. */
async function verify(service: ProcessService, paths: readonly string[], load: ReturnType<typeof startLoad>): Promise<void> {
  assert.deepEqual(load.dropped, [], 'commitd never dropped a connection');
  for (const answer of load.answers) {
    assert.ok(answer.status === 200 || answer.status === 503, `answer ${answer.status}: ${JSON.stringify(answer.body)}`);
    if (answer.status === 503) assert.ok(answer.retryAfter && Number(answer.retryAfter) >= 1, '503 carries Retry-After');
  }
  for (const { key } of load.acknowledged) {
    // The answer leaves before the result write (the early reply): a write that failed in
    // the outage is rolled forward by the read itself, `committing` (with the same session
    // ID) until the KV lets it finish; committed within the bound.
    const shown = await waitFor(
      `${key} committed`,
      async () => {
        const answer = await service.request('GET', `/v1/sessions/${key}`);
        if (answer.status === 503 || answer.body.state === 'committing') return undefined;
        assert.equal(answer.body.state, 'committed', `${key}: ${JSON.stringify(answer.body)}`);
        return answer;
      },
      { timeoutMs: 30_000, intervalMs: 200 },
    );
    assert.equal(shown.body.sessionId, sessionIdOfChanges(changesFor(key)));
    for (const path of paths) assert.equal(countRows(path, key), 1, `${key} once in ${path}`);
  }
  for (const key of load.attempted) {
    for (const path of paths) assert.ok(countRows(path, key) <= 1, `${key} at most once in ${path}`);
  }
}

describe('etcd faults under load', { skip: skipUnlessFound(kvNeeds('etcd')) }, () => {
  const root = makeTempDir('etcd-faults');
  after(() => removeTempDir(root));

  it('a single etcd SIGKILLed and restarted: 503 + Retry-After meanwhile, no acknowledged commit lost, recovers by itself', async (t: TestContext) => {
    const etcd: EtcdServer = await startEtcd();
    const { service, paths } = await startCommitd(root, 'single', etcd.endpoints);
    try {
      const load = startLoad(service, 4, 'single');
      try {
        await waitFor('commits before the fault', () => (load.acknowledged.length >= 20 ? true : undefined), { timeoutMs: 30_000 });
        await etcd.kill('SIGKILL');
        const killedAt = Date.now();
        await waitFor('a 503 during the outage', () => (load.answers.some((a) => a.status === 503 && a.at > killedAt) ? true : undefined), {
          timeoutMs: 15_000,
          intervalMs: 50,
        });
        await sleep(Math.max(0, killedAt + 2000 - Date.now()));
        await etcd.restart();
        const upAt = Date.now();
        // etcd3's circuit breaker fails calls fast for 5 s after the failures; allow for it.
        await waitFor('commits again after the restart', () => (load.acksSince(upAt) >= 20 ? true : undefined), { timeoutMs: 45_000 });
        const firstAck = load.acknowledged.find((ack) => ack.at > upAt);
        t.diagnostic(
          `outage answers: ${load.answers.filter((a) => a.at > killedAt && a.at < upAt).length}; first commit ${(firstAck?.at ?? upAt) - upAt} ms after etcd was back`,
        );
      } finally {
        await load.stop();
      }
      t.diagnostic(`acknowledged ${load.acknowledged.length}, 503s ${load.answers.filter((a) => a.status === 503).length}`);
      await verify(service, paths, load);
    } finally {
      await service.process.kill('SIGKILL');
      await etcd.cleanup();
    }
  });

  describe('3-member cluster', () => {
    let cluster: EtcdCluster;
    before(async () => {
      cluster = await startEtcdCluster(3);
    });
    after(() => cluster?.cleanup());

    /**
     * A guarded client on two members, one of them a follower frozen while the others take
     * writes. Right after it resumes, the follower may answer serializable reads from before
     * those writes; the guarded client must never return a revision older than one it saw.
     */
    it('serializable reads never go back in revision when a member lags behind', async (t: TestContext) => {
      const leader = await cluster.leader();
      const follower = cluster.members.findIndex((_, i) => i !== leader);
      const lagging = cluster.members[follower] as EtcdServer;
      const namespace = `/ordering-${randomUUID()}/`;
      const stale: number[] = [];
      const guarded = new EtcdKv({
        endpoints: [cluster.endpoints[leader] as string, lagging.clientUrl],
        namespace,
        onStaleRead: (_op, revision) => stale.push(revision),
      });
      const writer = new EtcdKv({ endpoints: [cluster.endpoints[leader] as string], namespace });
      try {
        let revision = await writer.create('x', '0');
        let reads = 0;
        for (let round = 1; round <= 8; round++) {
          lagging.pause();
          try {
            for (let i = 0; i < 40; i++) revision = await writer.update('x', `${round}.${i}`, revision);
          } finally {
            lagging.resume();
          }
          const seen = await guarded.get('x');
          assert.equal(seen?.revision, revision, 'a linearizable read sees the last write');
          let last = seen.revision;
          for (let i = 0; i < 30; i++) {
            const floor = guarded.highestRevisionSeen;
            const read = await guarded.get('x', { consistency: 'serializable' });
            const listed = await guarded.list('', { consistency: 'serializable' });
            reads += 2;
            assert.ok(read && read.revision >= last, `serializable get went back: ${read?.revision} < ${last}`);
            assert.ok((listed[0]?.revision ?? 0) >= last, `serializable list went back: ${listed[0]?.revision} < ${last}`);
            assert.ok(guarded.highestRevisionSeen >= floor, 'the floor never goes down');
            last = read.revision;
          }
        }
        t.diagnostic(`${reads} guarded serializable reads; ${stale.length} stale answers dropped and re-read linearizably`);
      } finally {
        await guarded.close();
        await writer.close();
      }
    });

    /**
     * Proposals in flight to the dead leader are lost and their requests hang until the KV
     * timeout (5 s); sessions queued on the sqlite write lock behind them wait too, and those
     * timeouts may open etcd3's breakers of the live members for another 5 s. So commits
     * resume within about 5–10 s, never with a 500, and nothing acknowledged is lost.
     */
    it('the leader SIGKILLed under load: commits go on, acknowledged ones are all there once', async (t: TestContext) => {
      const { service, paths } = await startCommitd(root, 'cluster', cluster.endpoints);
      try {
        const load = startLoad(service, 4, 'cluster');
        try {
          await waitFor('commits before the fault', () => (load.acknowledged.length >= 20 ? true : undefined), { timeoutMs: 30_000 });
          const leader = await cluster.leader();
          await (cluster.members[leader] as EtcdServer).kill('SIGKILL');
          const killedAt = Date.now();
          await waitFor('commits after the leader died', () => (load.acksSince(killedAt) >= 30 ? true : undefined), { timeoutMs: 45_000 });
          const firstAck = load.acknowledged.find((ack) => ack.at > killedAt);
          t.diagnostic(
            `first commit ${(firstAck?.at ?? killedAt) - killedAt} ms after the leader died; 503s after: ${load.answers.filter((a) => a.status === 503 && a.at > killedAt).length}`,
          );
          await (cluster.members[leader] as EtcdServer).restart();
        } finally {
          await load.stop();
        }
        t.diagnostic(`acknowledged ${load.acknowledged.length}`);
        await verify(service, paths, load);
      } finally {
        await service.process.kill('SIGKILL');
      }
    });
  });
});

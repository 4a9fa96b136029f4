/**
 * The KV contract, one suite run against both backends (etcd and SQLite), plus the
 * failure behaviour only one of them has: etcd going away and coming back, SQLite
 * surviving a crash of the writing process.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import Database from 'better-sqlite3';
import type { Kv, KvWatchEvent } from '../src/kv/kv.ts';
import { EtcdKv } from '../src/kv/etcd.ts';
import { SqliteKv } from '../src/kv/sqlite.ts';
import { AlreadyExistsError, ConstraintViolatedError, UnavailableError, VersionMismatchError } from '../src/kv/errors.ts';
import { etcdBinary, etcdRequest, startEtcd, type EtcdServer } from './harness/etcd.ts';
import { skipOrFail } from './harness/require.ts';

type OperationLog = string[];

/** A started backend: every `open` gives a KV isolated from the others it opened. */
interface Fixture {
  open(log?: OperationLog): Kv | Promise<Kv>;
  /** Revokes lease `leaseId` of `kv` the way another instance would, bypassing `kv`. */
  revokeElsewhere(kv: Kv, leaseId: string): Promise<void>;
  stop(): Promise<void>;
}

interface Backend {
  readonly name: string;
  /** Why the backend cannot run here, if it cannot. */
  unavailable(): string | undefined;
  start(): Promise<Fixture>;
}

function recorder(log: OperationLog | undefined): ((op: string) => void) | undefined {
  return log === undefined ? undefined : (op) => log.push(op);
}

const etcdBackend: Backend = {
  name: 'etcd',
  unavailable: () => (etcdBinary() === undefined ? 'etcd binary not found (set ETCD_BIN or put etcd on PATH)' : undefined),
  async start() {
    const server = await startEtcd();
    const opened: Kv[] = [];
    let namespaces = 0;
    return {
      open(log) {
        const kv = new EtcdKv({ endpoints: server.endpoints, namespace: `/kv-test-${namespaces++}/`, onOperation: recorder(log) });
        opened.push(kv);
        return kv;
      },
      async revokeElsewhere(_kv, leaseId) {
        await etcdRequest(server.clientUrl, '/v3/lease/revoke', { ID: leaseId });
      },
      async stop() {
        await Promise.all(opened.map((kv) => kv.close()));
        await server.cleanup();
      },
    };
  },
};

const sqliteBackend: Backend = {
  name: 'sqlite',
  unavailable: () => undefined,
  async start() {
    const dir = mkdtempSync(join(tmpdir(), 'kv-test-'));
    const paths = new Map<Kv, string>();
    return {
      async open(log) {
        const path = join(dir, 'nested', `kv-${paths.size}.db`);
        const options = { path, sweepIntervalMs: 200, onOperation: recorder(log) };
        const kv = new SqliteKv(options);
        paths.set(kv, path);
        return kv;
      },
      async revokeElsewhere(kv, leaseId) {
        const db = new Database(paths.get(kv) ?? assert.fail('not opened here'));
        db.prepare('DELETE FROM leases WHERE id = ?').run(leaseId);
        db.close();
      },
      async stop() {
        await Promise.all([...paths.keys()].map((kv) => kv.close()));
        rmSync(dir, { recursive: true, force: true });
      },
    };
  },
};

/** Polls `probe` until it returns true; fails after `timeoutMs`. */
async function eventually(what: string, timeoutMs: number, probe: () => Promise<boolean>): Promise<number> {
  const startedAt = Date.now();
  while (Date.now() - startedAt < timeoutMs) {
    if (await probe()) return Date.now() - startedAt;
    await sleep(100);
  }
  assert.fail(`${what} did not happen within ${timeoutMs} ms`);
}

/** The pid of the etcd process serving `server`, found by its data dir; none without procfs. */
function etcdPid(server: EtcdServer): number | undefined {
  let entries: string[];
  try {
    entries = readdirSync('/proc');
  } catch {
    return undefined;
  }
  const flag = `\0--data-dir\0${server.dataDir}\0`;
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (readFileSync(`/proc/${entry}/cmdline`, 'latin1').includes(flag)) return Number(entry);
    } catch {
      // The process exited while we looked.
    }
  }
  return assert.fail(`no process serves etcd data dir ${server.dataDir}`);
}

/** True once every thread of `pid` is stopped (state `T`). */
function stopped(pid: number): boolean {
  return readdirSync(`/proc/${pid}/task`).every((task) => {
    const stat = readFileSync(`/proc/${pid}/task/${task}/stat`, 'latin1');
    return stat.slice(stat.lastIndexOf(')') + 2).startsWith('T');
  });
}

/**
 * Pauses `server` and resolves once etcd has stopped. SIGSTOP takes effect only when the
 * kernel next schedules each of etcd's threads: on a loaded machine etcd went on answering
 * for milliseconds after `pause()` returned.
 */
async function pauseEtcd(server: EtcdServer): Promise<void> {
  server.pause();
  const pid = etcdPid(server);
  if (pid === undefined) return;
  const startedAt = Date.now();
  while (!stopped(pid)) {
    if (Date.now() - startedAt > 10_000) assert.fail(`etcd (pid ${pid}) did not stop within 10 s of SIGSTOP`);
    await sleep(1);
  }
}

/** Starts the backend once per describe; tests skip (or fail on CI) if it cannot run. */
function useBackend(backend: Backend): (t: TestContext) => Fixture | undefined {
  let fixture: Fixture | undefined;
  const reason = backend.unavailable();
  before(async () => {
    if (reason === undefined) fixture = await backend.start();
  });
  after(async () => {
    await fixture?.stop();
  });
  return (t) => {
    if (fixture === undefined) skipOrFail(t, reason ?? `${backend.name} did not start`);
    return fixture;
  };
}

for (const backend of [etcdBackend, sqliteBackend]) {
  describe(`KV contract: ${backend.name}`, () => {
    const fixture = useBackend(backend);
    const open = async (t: TestContext, log?: OperationLog): Promise<Kv | undefined> => fixture(t)?.open(log);
    const revokeElsewhere = (t: TestContext, kv: Kv, leaseId: string): Promise<void> => fixture(t)?.revokeElsewhere(kv, leaseId) ?? assert.fail('no fixture');

    it('get of a missing key is undefined', async (t) => {
      const kv = await open(t);
      if (!kv) return;
      assert.equal(await kv.get('missing'), undefined);
      assert.equal(await kv.get('missing', { consistency: 'serializable' }), undefined);
    });

    it('create stores a value once; a second create fails with AlreadyExistsError', async (t) => {
      const kv = await open(t);
      if (!kv) return;
      const revision = await kv.create('sessions/a', '{"state":"active"}');
      assert.deepEqual(await kv.get('sessions/a'), { key: 'sessions/a', value: '{"state":"active"}', revision });
      const stale = await kv.get('sessions/a', { consistency: 'serializable' });
      assert.deepEqual(stale, { key: 'sessions/a', value: '{"state":"active"}', revision });
      await assert.rejects(kv.create('sessions/a', 'other'), AlreadyExistsError);
      assert.equal((await kv.get('sessions/a'))?.value, '{"state":"active"}');
    });

    it('update at the current revision returns a higher revision; at a stale one fails', async (t) => {
      const kv = await open(t);
      if (!kv) return;
      const first = await kv.create('k', 'v1');
      const second = await kv.update('k', 'v2', first);
      assert.ok(second > first, `${second} > ${first}`);
      assert.deepEqual(await kv.get('k'), { key: 'k', value: 'v2', revision: second });
      await assert.rejects(kv.update('k', 'v3', first), VersionMismatchError);
      assert.equal((await kv.get('k'))?.value, 'v2');
    });

    it('delete at a stale revision fails; at the current one removes the key', async (t) => {
      const kv = await open(t);
      if (!kv) return;
      const first = await kv.create('k', 'v1');
      const second = await kv.update('k', 'v2', first);
      await assert.rejects(kv.delete('k', first), VersionMismatchError);
      assert.equal((await kv.get('k'))?.value, 'v2');
      await kv.delete('k', second);
      assert.equal(await kv.get('k'), undefined);
    });

    it('update and delete of a missing key fail with VersionMismatchError', async (t) => {
      const kv = await open(t);
      if (!kv) return;
      const revision = await kv.create('present', 'x');
      await assert.rejects(kv.update('absent', 'v', revision), VersionMismatchError);
      await assert.rejects(kv.update('absent', 'v', 0), VersionMismatchError);
      await assert.rejects(kv.delete('absent', revision), VersionMismatchError);
      await assert.rejects(kv.delete('absent', 0), VersionMismatchError);
      assert.equal(await kv.get('absent'), undefined);
    });

    it('list returns only the keys under the prefix, in key order', async (t) => {
      const kv = await open(t);
      if (!kv) return;
      for (const key of ['a/2', 'b/1', 'a/10', 'a', 'ab', 'a/1']) await kv.create(key, `value of ${key}`);
      const listed = await kv.list('a/');
      assert.deepEqual(
        listed.map((entry) => entry.key),
        ['a/1', 'a/10', 'a/2'],
      );
      assert.deepEqual(
        listed.map((entry) => entry.value),
        ['value of a/1', 'value of a/10', 'value of a/2'],
      );
      assert.deepEqual(
        (await kv.list('')).map((entry) => entry.key),
        ['a', 'a/1', 'a/10', 'a/2', 'ab', 'b/1'],
      );
      assert.deepEqual(await kv.list('c/', { consistency: 'serializable' }), []);
    });

    it('txn applies all ops or none', async (t) => {
      const kv = await open(t);
      if (!kv) return;
      const x = await kv.create('x', 'x1');
      await assert.rejects(
        kv.txn([
          { type: 'create', key: 'y', value: 'y1' },
          { type: 'update', key: 'x', value: 'x2', revision: x - 1 },
          { type: 'create', key: 'z', value: 'z1' },
        ]),
        ConstraintViolatedError,
      );
      assert.equal(await kv.get('y'), undefined);
      assert.equal(await kv.get('z'), undefined);
      assert.deepEqual(await kv.get('x'), { key: 'x', value: 'x1', revision: x });

      const revision = await kv.txn([
        { type: 'create', key: 'y', value: 'y1' },
        { type: 'update', key: 'x', value: 'x2', revision: x },
        { type: 'create', key: 'z', value: 'z1' },
      ]);
      assert.ok(revision > x);
      const entries = await kv.list('');
      assert.deepEqual(entries, [
        { key: 'x', value: 'x2', revision },
        { key: 'y', value: 'y1', revision },
        { key: 'z', value: 'z1', revision },
      ]);
      await kv.txn([
        { type: 'delete', key: 'y', revision },
        { type: 'delete', key: 'z', revision },
      ]);
      assert.deepEqual(
        (await kv.list('')).map((entry) => entry.key),
        ['x'],
      );
    });

    it('txn check ops condition the writes without writing', async (t) => {
      const kv = await open(t);
      if (!kv) return;
      const stale = await kv.create('instances/a', 'alive');
      const current = await kv.update('instances/a', 'alive', stale);

      await assert.rejects(
        kv.txn([
          { type: 'check', key: 'instances/a', exists: true, revision: stale },
          { type: 'create', key: 'sessions/1', value: 's' },
        ]),
        ConstraintViolatedError,
      );
      await assert.rejects(
        kv.txn([
          { type: 'check', key: 'instances/a', exists: false },
          { type: 'create', key: 'sessions/1', value: 's' },
        ]),
        ConstraintViolatedError,
      );
      await assert.rejects(
        kv.txn([
          { type: 'check', key: 'instances/b', exists: true },
          { type: 'create', key: 'sessions/1', value: 's' },
        ]),
        ConstraintViolatedError,
      );
      assert.equal(await kv.get('sessions/1'), undefined);

      const revision = await kv.txn([
        { type: 'check', key: 'instances/a', exists: true, revision: current },
        { type: 'check', key: 'instances/b', exists: false },
        { type: 'create', key: 'sessions/1', value: 's' },
      ]);
      assert.equal((await kv.get('sessions/1'))?.revision, revision);
      assert.equal((await kv.get('instances/a'))?.revision, current, 'a check does not write');
      assert.equal(await kv.txn([{ type: 'check', key: 'instances/a', exists: true }]), revision, 'a check-only txn does not write');
    });

    it('txn naming a key twice is rejected before anything is sent', async (t) => {
      const kv = await open(t);
      if (!kv) return;
      const revision = await kv.create('k', 'v');
      await assert.rejects(
        kv.txn([
          { type: 'check', key: 'k', exists: true },
          { type: 'update', key: 'k', value: 'w', revision },
        ]),
        { name: 'TypeError', message: /duplicate key in transaction: "k"/ },
      );
      assert.equal((await kv.get('k'))?.value, 'v');
    });

    it('revisions strictly increase across keys', async (t) => {
      const kv = await open(t);
      if (!kv) return;
      const seen: number[] = [];
      seen.push(await kv.create('r/a', '1'));
      seen.push(await kv.create('r/b', '1'));
      seen.push(await kv.update('r/a', '2', seen[0]!));
      seen.push(await kv.txn([{ type: 'create', key: 'r/c', value: '1' }]));
      await kv.delete('r/b', seen[1]!);
      seen.push(await kv.create('r/b', '2'));
      for (let i = 1; i < seen.length; i++) assert.ok(seen[i]! > seen[i - 1]!, `revisions ${seen.join(', ')} increase`);
    });

    it('a value written with ttlSeconds disappears, then the key can be created again', async (t) => {
      const kv = await open(t);
      if (!kv) return;
      await kv.create('results/a', 'r', { ttlSeconds: 1 });
      await kv.create('kept', 'k');
      assert.equal((await kv.get('results/a'))?.value, 'r');
      const waited = await eventually('TTL expiry', 6000, async () => (await kv.get('results/a')) === undefined);
      assert.ok(waited >= 500, `expired after ${waited} ms, not before its TTL`);
      assert.deepEqual(
        (await kv.list('')).map((entry) => entry.key),
        ['kept'],
      );
      await kv.create('results/a', 'again');
      assert.equal((await kv.get('results/a'))?.value, 'again');
    });

    it('writes with the same TTL share a lease: after the first, one round trip each', async (t) => {
      const log: OperationLog = [];
      const kv = await open(t, log);
      if (!kv) return;
      await kv.create('results/1', 'r', { ttlSeconds: 3600 });
      log.length = 0;
      await kv.create('results/2', 'r', { ttlSeconds: 3600 });
      await kv.txn([{ type: 'create', key: 'results/3', value: 'r', options: { ttlSeconds: 3600 } }]);
      assert.deepEqual(log, ['create', 'txn']);
    });

    it('concurrent writes share transactions (group commit); a write whose condition fails fails alone', async (t) => {
      const log: OperationLog = [];
      const kv = await open(t, log);
      if (!kv) return;
      await kv.create('results/taken', 'r');
      const stale = await kv.create('sessions/moved', 'v1');
      await kv.update('sessions/moved', 'v2', stale);
      log.length = 0;
      const writes = 48;
      const outcomes = await Promise.allSettled(
        Array.from({ length: writes }, (_, i) => {
          if (i % 8 === 3)
            return kv.txn([
              { type: 'check', key: 'results/taken', exists: false },
              { type: 'create', key: `sessions/x${i}`, value: 'c' },
            ]);
          if (i % 8 === 5) return kv.update('sessions/moved', `lost ${i}`, stale);
          if (i % 8 === 7) return kv.create('results/taken', `again ${i}`);
          // Some lazy (no fsync on the embedded KV): a group mixes them with durable writes.
          return kv.txn(
            [
              { type: 'check', key: `results/s${i}`, exists: false },
              { type: 'create', key: `sessions/s${i}`, value: `v${i}`, options: { ttlSeconds: 3600 } },
            ],
            { lazySync: i % 3 === 0 },
          );
        }),
      );
      for (const [i, outcome] of outcomes.entries()) {
        const expected = i % 8 === 3 ? ConstraintViolatedError : i % 8 === 5 ? VersionMismatchError : i % 8 === 7 ? AlreadyExistsError : undefined;
        if (expected === undefined) {
          assert.equal(outcome.status, 'fulfilled', `write ${i}: ${outcome.status === 'rejected' ? outcome.reason : ''}`);
          assert.equal((await kv.get(`sessions/s${i}`))?.value, `v${i}`);
        } else {
          assert.ok(outcome.status === 'rejected' && outcome.reason instanceof expected, `write ${i} fails with ${expected.name}`);
        }
      }
      assert.equal((await kv.get('sessions/x3')) ?? 'absent', 'absent');
      assert.equal((await kv.get('sessions/moved'))?.value, 'v2');
      assert.equal((await kv.get('results/taken'))?.value, 'r');
      if (backend.name === 'etcd') {
        const sent = log.filter((op) => op !== 'lease' && op !== 'get').length;
        assert.ok(sent < writes / 2, `${writes} concurrent writes took ${sent} etcd transactions`);
      }
    });

    it('concurrent writes to one key are never in one group and land in the order issued: the first create wins', async (t) => {
      const kv = await open(t);
      if (!kv) return;
      // Other keys' writes keep the group slots busy, so the key's writes queue behind them.
      const others = Array.from({ length: 8 }, (_, i) => kv.create(`sessions/other${i}`, 'o'));
      const outcomes = await Promise.allSettled(Array.from({ length: 6 }, (_, i) => kv.create('sessions/same', `v${i}`)));
      await Promise.all(others);
      assert.equal(outcomes[0]?.status, 'fulfilled', 'the first create issued wins');
      assert.ok(outcomes.slice(1).every((outcome) => outcome.status === 'rejected' && outcome.reason instanceof AlreadyExistsError));
      assert.equal((await kv.get('sessions/same'))?.value, 'v0');
    });

    it('revoking a lease deletes the keys attached to it', async (t) => {
      const kv = await open(t);
      if (!kv) return;
      const lease = await kv.grantLease(30);
      await kv.create('instances/a', 'me', { lease });
      await kv.txn([{ type: 'create', key: 'instances/b', value: 'me', options: { lease } }]);
      await kv.create('other', 'x');
      await lease.revoke();
      assert.deepEqual(
        (await kv.list('')).map((entry) => entry.key),
        ['other'],
      );
      await assert.rejects(kv.create('instances/c', 'me', { lease }), ConstraintViolatedError);
    });

    it('a lease not kept alive expires; a kept-alive one stays without reporting a loss', async (t) => {
      const kv = await open(t);
      if (!kv) return;
      const [idle, kept] = await Promise.all([kv.grantLease(1), kv.grantLease(1)]);
      const losses: Error[] = [];
      kept.keepAlive((reason) => losses.push(reason));
      await kv.create('idle', 'x', { lease: idle });
      await kv.create('kept', 'x', { lease: kept });
      await eventually('expiry of the idle lease', 6000, async () => (await kv.get('idle')) === undefined);
      await sleep(1500);
      assert.equal((await kv.get('kept'))?.value, 'x');
      assert.deepEqual(losses, []);
      await kept.revoke();
      assert.equal(await kv.get('kept'), undefined);
      assert.deepEqual(losses, [], 'revoke is not a loss');
    });

    it('a kept-alive lease that is revoked elsewhere reports its loss once', async (t) => {
      const kv = await open(t);
      if (!kv) return;
      const lease = await kv.grantLease(1);
      const losses: Error[] = [];
      lease.keepAlive((reason) => losses.push(reason));
      await kv.create('instances/a', 'me', { lease });
      await revokeElsewhere(t, kv, lease.id);
      await eventually('loss report', 4000, async () => losses.length > 0);
      await sleep(700);
      assert.equal(losses.length, 1);
      assert.equal(await kv.get('instances/a'), undefined);
    });

    it('KVs opened apart do not see each other’s keys', async (t) => {
      const one = await open(t);
      const two = await open(t);
      if (!one || !two) return;
      await one.create('shared-name', 'one');
      assert.equal(await two.get('shared-name'), undefined);
      assert.deepEqual(await two.list(''), []);
      await two.create('shared-name', 'two');
      assert.equal((await one.get('shared-name'))?.value, 'one');
    });

    it('ping resolves while the backend answers', async (t) => {
      const kv = await open(t);
      if (!kv) return;
      await kv.ping();
    });

    it('watch reports a snapshot of the prefix, then its puts and deletes, and nothing outside it', async (t) => {
      const kv = await open(t);
      if (!kv) return;
      await kv.create('w/before', 'old');
      await kv.create('other', 'x');
      const events: KvWatchEvent[] = [];
      const watch = kv.watch('w/', (event) => events.push(event));
      t.after(() => watch.close());
      const until = async (what: string, done: () => boolean) => {
        const deadline = Date.now() + 10_000;
        while (!done()) {
          if (Date.now() > deadline) assert.fail(`no ${what}: ${JSON.stringify(events)}`);
          await new Promise((resolve) => setTimeout(resolve, 10));
        }
      };
      await until('snapshot', () => events.length > 0);
      assert.deepEqual(events[0], { type: 'snapshot', entries: [await kv.get('w/before')] });
      const revision = await kv.create('w/new', 'v1');
      await kv.create('outside', 'y');
      const before = await kv.get('w/before');
      assert.ok(before);
      await kv.delete('w/before', before.revision);
      await until('delete', () => events.some((event) => event.type === 'delete'));
      assert.deepEqual(events.slice(1), [
        { type: 'put', entry: { key: 'w/new', value: 'v1', revision } },
        { type: 'delete', key: 'w/before' },
      ]);
    });
  });
}

describe('etcd KV when etcd fails', () => {
  let server: EtcdServer | undefined;
  const clients: EtcdKv[] = [];
  const reason = etcdBackend.unavailable();
  before(async () => {
    if (reason === undefined) server = await startEtcd();
  });
  after(async () => {
    await Promise.all(clients.map((kv) => kv.close()));
    await server?.cleanup();
  });
  const open = (t: TestContext, timeoutMs: number): { kv: EtcdKv; server: EtcdServer } | undefined => {
    if (server === undefined) {
      skipOrFail(t, reason ?? 'etcd did not start');
      return undefined;
    }
    const kv = new EtcdKv({ endpoints: server.endpoints, namespace: `/kv-failure-${clients.length}/`, timeoutMs });
    clients.push(kv);
    return { kv, server };
  };

  it('a paused etcd makes operations reject with UnavailableError at the timeout', async (t) => {
    const opened = await open(t, 1000);
    if (!opened) return;
    const { kv, server } = opened;
    await kv.create('k', 'v');
    await pauseEtcd(server);
    try {
      const startedAt = Date.now();
      await assert.rejects(kv.get('k'), UnavailableError);
      await assert.rejects(kv.create('other', 'v'), UnavailableError);
      const elapsed = Date.now() - startedAt;
      assert.ok(elapsed < 2 * 1000 + 1000, `two operations took ${elapsed} ms`);
    } finally {
      server.resume();
    }
  });

  it('a killed etcd makes operations fail fast; after a restart they succeed and the data is there', async (t) => {
    const opened = await open(t, 1000);
    if (!opened) return;
    const { kv, server } = opened;
    const revision = await kv.create('sessions/a', 'active');
    await server.kill('SIGKILL');
    for (const operation of [() => kv.get('sessions/a'), () => kv.update('sessions/a', 'x', revision), () => kv.ping()]) {
      const startedAt = Date.now();
      await assert.rejects(operation(), UnavailableError);
      assert.ok(Date.now() - startedAt < 1000 + 500, `rejected after ${Date.now() - startedAt} ms`);
    }
    await server.restart();
    // etcd3's circuit breaker keeps failing calls for up to 5 s after the outage.
    await eventually('recovery after the restart', 10_000, async () => {
      try {
        await kv.ping();
        return true;
      } catch (error) {
        assert.ok(error instanceof UnavailableError, String(error));
        return false;
      }
    });
    assert.deepEqual(await kv.get('sessions/a'), { key: 'sessions/a', value: 'active', revision });
    assert.ok((await kv.update('sessions/a', 'committing', revision)) > revision);
  });

  it('the client recovers when etcd restarts between two operations', async (t) => {
    const opened = await open(t, 2000);
    if (!opened) return;
    const { kv, server } = opened;
    const revision = await kv.create('sessions/b', 'active');
    await server.restart();
    let failures = 0;
    await eventually('the first operation after the restart', 10_000, async () => {
      try {
        assert.equal((await kv.update('sessions/b', 'committing', revision)) > revision, true);
        return true;
      } catch (error) {
        assert.ok(error instanceof UnavailableError, String(error));
        failures++;
        return false;
      }
    });
    assert.equal((await kv.get('sessions/b'))?.value, 'committing');
    t.diagnostic(`operations that failed after the restart: ${failures}`);
  });
});

describe('SQLite KV durability', () => {
  const dir = mkdtempSync(join(tmpdir(), 'kv-crash-'));
  after(() => rmSync(dir, { recursive: true, force: true }));

  for (const mode of ['durable', 'lazy'] as const) {
    it(`a value written (${mode}) before the process is SIGKILLed is there after reopening`, async () => {
      const path = join(dir, mode, 'kv.db');
      const fixture = new URL('./fixtures/sqlite-crash-writer.ts', import.meta.url).pathname;
      const child = spawn(process.execPath, ['--import', 'tsx', fixture, path, 'sessions/crash', 'committing', mode], {
        stdio: ['ignore', 'pipe', 'inherit'],
      });
      let stdout = '';
      child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
      const signal = await new Promise<NodeJS.Signals | null>((resolve) => child.on('exit', (_code, sig) => resolve(sig)));
      assert.equal(signal, 'SIGKILL');
      const written = Number(stdout.trim());
      assert.ok(written >= 1, `the child reported revision ${JSON.stringify(stdout)}`);

      const kv = new SqliteKv({ path });
      try {
        assert.deepEqual(await kv.get('sessions/crash'), { key: 'sessions/crash', value: 'committing', revision: written });
        assert.ok((await kv.create('sessions/next', 'active')) > written, 'revisions keep increasing across the crash');
      } finally {
        await kv.close();
      }
    });
  }

  it('the sweep deletes expired rows from the file', async () => {
    const path = join(dir, 'sweep.db');
    const kv = new SqliteKv({ path, sweepIntervalMs: 100 });
    try {
      await kv.create('short', 'x', { ttlSeconds: 0.2 });
      const lease = await kv.grantLease(0.2);
      await kv.create('leased', 'x', { lease });
      await kv.create('kept', 'x');
      const db = new Database(path, { readonly: true });
      try {
        const rows = (): unknown[] => db.prepare('SELECT key FROM kv ORDER BY key').all();
        await eventually('the sweep', 3000, async () => rows().length === 1);
        assert.deepEqual(rows(), [{ key: 'kept' }]);
        assert.deepEqual(db.prepare('SELECT id FROM leases').all(), []);
      } finally {
        db.close();
      }
    } finally {
      await kv.close();
    }
  });

  it('a lazy transaction leaves the connection syncing every later write (synchronous=FULL)', async () => {
    const kv = new SqliteKv({ path: join(dir, 'lazy.db') });
    // White-box: the setting is per connection and nothing outside it can see it. A lazy
    // group that left NORMAL behind would make every later commit skip its fsync.
    const db = Reflect.get(kv, 'db') as Database.Database;
    const synchronous = (): unknown => db.pragma('synchronous', { simple: true });
    try {
      assert.equal(synchronous(), 2);
      await kv.txn([{ type: 'create', key: 'results/a', value: 'r' }], { lazySync: true });
      assert.equal(synchronous(), 2, 'FULL again after an all-lazy group');
      await Promise.all([
        kv.txn([{ type: 'create', key: 'results/b', value: 'r' }], { lazySync: true }),
        kv.txn([{ type: 'create', key: 'results/a', value: 'again' }], { lazySync: true }).catch((error: unknown) => error),
        kv.create('sessions/c', 'durable'),
      ]);
      assert.equal(synchronous(), 2);
      assert.equal((await kv.get('results/a'))?.value, 'r', 'a lazy write whose condition fails applies nothing');
      assert.equal((await kv.get('results/b'))?.value, 'r');
    } finally {
      await kv.close();
    }
  });

  it('operations after close reject with UnavailableError', async () => {
    const kv = new SqliteKv({ path: join(dir, 'closed.db') });
    await kv.close();
    await assert.rejects(kv.get('k'), UnavailableError);
    await assert.rejects(kv.create('k', 'v'), UnavailableError);
  });
});

/**
 * The crash matrix: for every failpoint × 1, 2 and 3 sqlite stores, and two mysql stores
 * (one in XA mode) on a throwaway MariaDB, a one-shot commit and an interactive session are
 * SIGKILLed there; after a restart the session ends committed exactly once with the session
 * ID its changes define — or, when the crash came before the commit point, absent, and a
 * retry commits it. Both KV backends.
 *
 * The nats rows do the same with a `nats` store alone and after a sqlite store (so that
 * `commit.afterStore.1` falls once after and once before the publishes): the stream holds
 * one message per key. The embedded KV only: the rows are about the store, the KV's part is
 * covered above.
 *
 * The http rows do the same with an `http` participant (a stock service on the SDK's
 * barrier, in this test process, outliving every kill) alone and after a sqlite store: the
 * participant holds one confirmed reservation per key, no confirm came before its try and
 * no cancel after a confirm. A session with a participant writes its record at begin, a
 * one-shot too, so a crash at `begin.afterRecord` leaves it absent in both modes.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { StoreDefinition } from '../src/coordinator/types.ts';
import { sessionIdOfChanges } from '../src/core/session-id.ts';
import { makeTempDir, removeTempDir } from './harness/child.ts';
import { natsBinary, startNats, type NatsServer } from './harness/nats.ts';
import { mariadbBinary, mariadbInstallDb, mysqlRows, startMariadb, type MariadbServer } from './harness/mariadb.ts';
import { skipUnlessFound } from './harness/require.ts';
import { natsReader, type NatsReader } from './support/nats.ts';
import { startProcess, type ProcessServiceOptions } from './support/process.ts';
import { protocolViolations, startStockParticipant, type StockParticipant } from './support/stock-participant.ts';
import { countRows, sqliteRun } from './support/rows.ts';
import { KV_BACKENDS, kvNeeds, sharedEtcdServer, sqliteStores } from './support/service.ts';

type Mode = 'one-shot' | 'interactive';

/** The stores of one row of the matrix, each with table `t(k, n)`, and how to count a key's rows in one. */
interface StoreSet {
  readonly label: string;
  readonly names: readonly string[];
  readonly needs: Readonly<Record<string, unknown>>;
  setup(dir: string): Promise<{ stores: StoreDefinition[]; count(name: string, key: string): Promise<number> }>;
  /** A change inserting row `(key, n)`. */
  insert(key: string, n: number): { sql: string; params: unknown[] };
}

const sqliteSet = (storeCount: number): StoreSet => ({
  label: `${storeCount} store(s)`,
  names: ['s1', 's2', 's3'].slice(0, storeCount),
  needs: {},
  async setup(dir) {
    const stores = sqliteStores(dir, this.names);
    for (const { options } of stores) sqliteRun((options as { path: string }).path, 'CREATE TABLE t(k TEXT, n INTEGER)');
    return { stores, count: async (name, key) => countRows(join(dir, `${name}.db`), key) };
  },
  insert: (key, n) => ({ sql: 'INSERT INTO t(k, n) VALUES (?, ?)', params: [key, n] }),
});

/** One MariaDB for the file's mysql rows; each row gets databases of its own. */
let mariadb: Promise<MariadbServer> | undefined;
after(async () => (await mariadb)?.cleanup());

const mysqlSet: StoreSet = {
  label: '2 mysql stores (m2 in XA mode)',
  names: ['m1', 'm2'],
  needs: { mariadbd: mariadbBinary(), 'mariadb-install-db': mariadbInstallDb() },
  async setup() {
    mariadb ??= startMariadb();
    const server = await mariadb;
    const urls = new Map<string, string>();
    for (const name of this.names) {
      const url = await server.createDatabase(`matrix_${name}`);
      await mysqlRows(url, 'CREATE TABLE t (k VARCHAR(200) NOT NULL, n INT NOT NULL, INDEX (k)) ENGINE=InnoDB');
      urls.set(name, url);
    }
    return {
      stores: this.names.map((name) => ({ name, type: 'mysql', options: { connectionString: urls.get(name), xa: name === 'm2' } })),
      count: async (name, key) => Number((await mysqlRows<{ n: number }>(urls.get(name) as string, 'SELECT count(*) AS n FROM t WHERE k = ?', [key]))[0]?.n),
    };
  },
  insert: (key, n) => ({ sql: 'INSERT INTO t (k, n) VALUES (?, ?)', params: [key, n] }),
};

const STORE_SETS: readonly StoreSet[] = [sqliteSet(1), sqliteSet(2), sqliteSet(3), mysqlSet];

function pointsFor(storeCount: number): string[] {
  const afterStores = Array.from({ length: storeCount }, (_, i) => `commit.afterStore.${i + 1}`);
  return ['begin.afterRecord', 'commit.afterIntent', ...afterStores, 'commit.beforeResult', 'recovery.afterAdopt'];
}

/** Before the commit point only an interactive session's first record exists: it is cancelled. */
const endsAbsent = (point: string, mode: Mode) => point === 'begin.afterRecord' && mode === 'interactive';

async function runSession(
  request: (m: string, p: string, b?: unknown) => Promise<{ status: number; body: Record<string, unknown> }>,
  mode: Mode,
  key: string,
  changes: Record<string, unknown[]>,
) {
  if (mode === 'one-shot') return request('POST', '/v1/commits', { key, changes });
  await request('POST', '/v1/sessions', { key, stores: Object.keys(changes) });
  for (const [store, list] of Object.entries(changes)) await request('POST', `/v1/sessions/${key}/changes`, { store, changes: list });
  return request('POST', `/v1/sessions/${key}/commit`);
}

for (const kv of KV_BACKENDS) {
  describe(`crash matrix (${kv} KV)`, { skip: skipUnlessFound(kvNeeds(kv)) }, () => {
    const root = makeTempDir('matrix');
    let etcd: ProcessServiceOptions['etcd'];
    before(async () => {
      if (kv === 'etcd') etcd = { endpoints: (await sharedEtcdServer()).endpoints, namespace: `/matrix-${randomUUID()}/` };
    });
    after(() => removeTempDir(root));

    for (const set of STORE_SETS) {
      for (const point of pointsFor(set.names.length)) {
        for (const mode of ['one-shot', 'interactive'] as const) {
          it(`${set.label}, ${mode}, SIGKILL at ${point}`, { skip: skipUnlessFound(set.needs) }, async () => {
            const slug = set.label.replace(/\W+/g, '-');
            const dir = join(root, `${slug}-${point}-${mode}`);
            mkdirSync(dir, { recursive: true });
            const names = set.names;
            const { stores, count } = await set.setup(dir);
            const options: ProcessServiceOptions = { dir, stores, etcd: etcd && { ...etcd, namespace: `${etcd.namespace}${slug}/${point}/${mode}/` } };
            const key = `m-${names.join('')}-${mode}-${point}`;
            const changes = Object.fromEntries(names.map((name, i) => [name, [set.insert(key, i)]]));
            const expectedId = sessionIdOfChanges(changes);

            // recovery.afterAdopt needs a session to adopt: crash it after its commit point first.
            const firstPoint = point === 'recovery.afterAdopt' ? 'commit.afterIntent' : point;
            const doomed = await startProcess(options, `${firstPoint}=crash`);
            await assert.rejects(runSession(doomed.request, mode, key, changes), 'the request must die with the process');
            assert.equal((await doomed.process.waitForExit(20_000)).signal, 'SIGKILL');
            if (point === 'recovery.afterAdopt') {
              const adopter = await startProcess(options, 'recovery.afterAdopt=crash', false);
              assert.equal((await adopter.process.waitForExit(20_000)).signal, 'SIGKILL', 'recovery at start-up must reach the failpoint');
            }

            const restarted = await startProcess(options);
            try {
              let shown = await restarted.request('GET', `/v1/sessions/${key}`);
              if (endsAbsent(point, mode)) {
                assert.equal(shown.status, 404, JSON.stringify(shown.body));
                for (const name of names) assert.equal(await count(name, key), 0);
                const retried = await runSession(restarted.request, mode, key, changes);
                assert.equal(retried.status, 200, JSON.stringify(retried.body));
                shown = await restarted.request('GET', `/v1/sessions/${key}`);
              }
              assert.equal(shown.status, 200, JSON.stringify(shown.body));
              assert.equal(shown.body.state, 'committed');
              assert.equal(shown.body.sessionId, expectedId);
              const again = await runSession(restarted.request, 'one-shot', key, changes);
              assert.equal(again.body.sessionId, expectedId, 'a retry answers the committed result');
              for (const name of names) assert.equal(await count(name, key), 1, `${name} must hold the row exactly once`);
            } finally {
              await restarted.process.stop();
            }
          });
        }
      }
    }
  });
}

describe('crash matrix: nats rows (sqlite KV)', { skip: skipUnlessFound({ 'nats-server': natsBinary() }) }, () => {
  const root = makeTempDir('matrix-nats');
  const stream = 'matrix';
  let nats: NatsServer;
  let reader: NatsReader;
  before(async () => {
    nats = await startNats();
    reader = await natsReader(nats.url);
    // commitd's default retention is a day: so must the duplicate window be.
    await reader.addStream(stream, ['matrix.>'], 86_400);
  });
  after(async () => {
    await reader?.close();
    await nats?.cleanup();
    await removeTempDir(root);
  });

  for (const storeCount of [1, 2]) {
    for (const point of pointsFor(storeCount)) {
      for (const mode of ['one-shot', 'interactive'] as const) {
        it(`nats${storeCount === 2 ? ' after sqlite' : ''}, ${mode}, SIGKILL at ${point}`, async () => {
          const dir = join(root, `${storeCount}-${point}-${mode}`);
          mkdirSync(dir, { recursive: true });
          const key = `n-${storeCount}-${mode}-${point}`;
          const subject = `matrix.${key.replaceAll('.', '_')}`;
          const events = { name: storeCount === 2 ? 's2' : 's1', type: 'nats', options: { servers: nats.url, stream } };
          const ledger = sqliteStores(dir, ['s1']);
          const stores = storeCount === 2 ? [...ledger, events] : [events];
          if (storeCount === 2) sqliteRun(join(dir, 's1.db'), 'CREATE TABLE t(k TEXT, n INTEGER)');
          const changes: Record<string, unknown[]> = { [events.name]: [{ subject, data: { key, event: 'created' } }] };
          if (storeCount === 2) changes.s1 = [{ sql: 'INSERT INTO t(k, n) VALUES (?, ?)', params: [key, 1] }];
          const expectedId = sessionIdOfChanges(changes);
          const options: ProcessServiceOptions = { dir, stores };

          const firstPoint = point === 'recovery.afterAdopt' ? 'commit.afterIntent' : point;
          const doomed = await startProcess(options, `${firstPoint}=crash`);
          await assert.rejects(runSession(doomed.request, mode, key, changes), 'the request must die with the process');
          assert.equal((await doomed.process.waitForExit(20_000)).signal, 'SIGKILL');
          if (point === 'recovery.afterAdopt') {
            const adopter = await startProcess(options, 'recovery.afterAdopt=crash', false);
            assert.equal((await adopter.process.waitForExit(20_000)).signal, 'SIGKILL', 'recovery at start-up must reach the failpoint');
          }

          const restarted = await startProcess(options);
          try {
            let shown = await restarted.request('GET', `/v1/sessions/${key}`);
            if (endsAbsent(point, mode)) {
              assert.equal(shown.status, 404, JSON.stringify(shown.body));
              assert.equal(await reader.count(stream, subject), 0, 'nothing is published before the commit point');
              const retried = await runSession(restarted.request, mode, key, changes);
              assert.equal(retried.status, 200, JSON.stringify(retried.body));
              shown = await restarted.request('GET', `/v1/sessions/${key}`);
            }
            assert.equal(shown.status, 200, JSON.stringify(shown.body));
            assert.equal(shown.body.state, 'committed');
            assert.equal(shown.body.sessionId, expectedId);
            const again = await runSession(restarted.request, 'one-shot', key, changes);
            assert.equal(again.body.sessionId, expectedId, 'a retry answers the committed result');
            assert.equal(await reader.count(stream, subject), 1, 'the stream holds one message for the key');
            if (storeCount === 2) assert.equal(countRows(join(dir, 's1.db'), key), 1, 's1 must hold the row exactly once');
          } finally {
            await restarted.process.stop();
          }
        });
      }
    }
  }
});

describe('crash matrix: http rows (sqlite KV)', () => {
  const root = makeTempDir('matrix-http');
  let participant: StockParticipant;
  before(async () => {
    participant = await startStockParticipant(root);
  });
  after(async () => {
    await participant?.close();
    await removeTempDir(root);
  });

  for (const storeCount of [1, 2]) {
    for (const point of pointsFor(storeCount)) {
      for (const mode of ['one-shot', 'interactive'] as const) {
        it(`http${storeCount === 2 ? ' after sqlite' : ''}, ${mode}, SIGKILL at ${point}`, async () => {
          const dir = join(root, `${storeCount}-${point}-${mode}`);
          mkdirSync(dir, { recursive: true });
          const key = `h-${storeCount}-${mode}-${point}`;
          const stock = {
            name: storeCount === 2 ? 's2' : 's1',
            type: 'http',
            options: { baseUrl: participant.url, timeoutMs: 5000, retry: { attempts: 3, backoffMs: 50 } },
          };
          const stores = storeCount === 2 ? [...sqliteStores(dir, ['s1']), stock] : [stock];
          if (storeCount === 2) sqliteRun(join(dir, 's1.db'), 'CREATE TABLE t(k TEXT, n INTEGER)');
          const changes: Record<string, unknown[]> = { [stock.name]: [{ action: 'reserve', body: { sku: 'widget', qty: 1 } }] };
          if (storeCount === 2) changes.s1 = [{ sql: 'INSERT INTO t(k, n) VALUES (?, ?)', params: [key, 1] }];
          const expectedId = sessionIdOfChanges(changes);
          const options: ProcessServiceOptions = { dir, stores };
          const available = participant.available('widget');

          const firstPoint = point === 'recovery.afterAdopt' ? 'commit.afterIntent' : point;
          const doomed = await startProcess(options, `${firstPoint}=crash`);
          await assert.rejects(runSession(doomed.request, mode, key, changes), 'the request must die with the process');
          assert.equal((await doomed.process.waitForExit(20_000)).signal, 'SIGKILL');
          if (point === 'recovery.afterAdopt') {
            const adopter = await startProcess(options, 'recovery.afterAdopt=crash', false);
            assert.equal((await adopter.process.waitForExit(20_000)).signal, 'SIGKILL', 'recovery at start-up must reach the failpoint');
          }

          const restarted = await startProcess(options);
          try {
            let shown = await restarted.request('GET', `/v1/sessions/${key}`);
            if (point === 'begin.afterRecord') {
              assert.equal(shown.status, 404, JSON.stringify(shown.body));
              assert.equal(participant.confirmed(key), 0, 'nothing is confirmed before the commit point');
              const retried = await runSession(restarted.request, mode, key, changes);
              assert.equal(retried.status, 200, JSON.stringify(retried.body));
              shown = await restarted.request('GET', `/v1/sessions/${key}`);
            }
            assert.equal(shown.status, 200, JSON.stringify(shown.body));
            assert.equal(shown.body.state, 'committed');
            assert.equal(shown.body.sessionId, expectedId);
            const again = await runSession(restarted.request, 'one-shot', key, changes);
            assert.equal(again.body.sessionId, expectedId, 'a retry answers the committed result');
            assert.equal(participant.confirmed(key), 1, 'the participant holds one confirmed effect for the key');
            assert.equal(participant.available('widget'), available - 1, 'the stock was taken once');
            assert.equal(participant.reserved('widget'), 0, 'no reservation is left pending');
            assert.deepEqual(protocolViolations(participant.journal, key), []);
            if (storeCount === 2) assert.equal(countRows(join(dir, 's1.db'), key), 1, 's1 must hold the row exactly once');
          } finally {
            await restarted.process.stop();
          }
        });
      }
    }
  }
});

/** What only the etcd store type does; what every store type does is in test/contract/etcd.test.ts. */
import assert from 'node:assert/strict';
import { after, afterEach, before, describe, it, type TestContext } from 'node:test';
import { Etcd3 } from 'etcd3';
import { pino } from 'pino';
import { BookkeepingError } from '../src/stores/errors.ts';
import { ETCD_MAX_CHANGED_KEYS, etcdStoreType, TooManyOperationsError, type EtcdChange, type EtcdOptions } from '../src/stores/etcd/store.ts';
import type { Store, StoreContext } from '../src/stores/api.ts';
import { keyBytes, toHex } from '../src/core/keys.ts';
import { etcdBinary, startEtcd, type EtcdServer } from './harness/etcd.ts';
import { skipOrFail } from './harness/require.ts';
import { begun, commitOnce } from './support/store-session.ts';

const baseCtx = { name: 'config', logger: pino({ level: 'silent' }), dataDir: '.', retentionSeconds: 60 };
const PREFIX = '/app/';

const put = (key: string, value: string): EtcdChange => ({ op: 'put', key, value });

describe('etcd store', () => {
  // One server for the suite; tests use their own keys.
  let server: EtcdServer | undefined;
  let client: Etcd3 | undefined;
  let stores: Store<EtcdChange>[] = [];

  before(async () => {
    if (!etcdBinary()) return;
    server = await startEtcd();
    client = new Etcd3({ hosts: server.endpoints });
  });
  afterEach(async () => {
    for (const store of stores) await store.close();
    stores = [];
  });
  after(async () => {
    client?.close();
    await server?.cleanup();
  });

  function requireServer(t: TestContext): EtcdServer | undefined {
    if (!server) skipOrFail(t, 'etcd binary not found (set ETCD_BIN or put etcd on PATH)');
    return server;
  }

  async function open(options: Partial<EtcdOptions> = {}, ctx: Partial<StoreContext> = {}): Promise<Store<EtcdChange>> {
    const store = await etcdStoreType.create({ prefix: PREFIX, ...options }, { ...baseCtx, etcdEndpoints: server?.endpoints, ...ctx });
    stores.push(store);
    return store;
  }

  const etcd = (): Etcd3 => client as Etcd3;
  const get = (key: string): Promise<string | null> =>
    etcd()
      .get(PREFIX + key)
      .string();
  const marker = (key: string): Promise<string | null> => get(`commitd/sessions/${key}`);

  it('commits puts, deletes and the marker in one transaction, once', async (t) => {
    if (!requireServer(t)) return;
    const store = await open();
    await etcd().put(`${PREFIX}et-commit/old`).value('old');
    const id = await commitOnce(store, 'et-commit', [
      put('et-commit/a', '1'),
      { op: 'delete', key: 'et-commit/old' },
      put('et-commit/b', 'first'),
      put('et-commit/b', 'last'),
      put('et-commit/gone', 'x'),
      { op: 'delete', key: 'et-commit/gone' },
    ]);
    assert.equal(await get('et-commit/a'), '1');
    assert.equal(await get('et-commit/old'), null);
    assert.equal(await get('et-commit/b'), 'last');
    assert.equal(await get('et-commit/gone'), null);
    assert.equal(await marker('et-commit'), toHex(id));
  });

  it('attaches markers to one shared lease of the retention period', async (t) => {
    if (!requireServer(t)) return;
    const store = await open({}, { retentionSeconds: 30 });
    await commitOnce(store, 'et-lease-1', []);
    await commitOnce(store, 'et-lease-2', []);
    const [first, second] = await Promise.all(
      ['et-lease-1', 'et-lease-2'].map(async (key) => (await etcd().get(`${PREFIX}commitd/sessions/${key}`).exec()).kvs[0]?.lease),
    );
    assert.ok(first && first !== '0', 'the marker has a lease');
    assert.equal(first, second);
    const { TTL } = await etcd().leaseClient.leaseTimeToLive({ ID: first });
    assert.ok(Number(TTL) > 25 && Number(TTL) <= 31, `lease TTL ${TTL}`);
  });

  it('two committers of one key (a paused owner and its successor): the data lands once', async (t) => {
    if (!requireServer(t)) return;
    const [paused, successor] = [await open(), await open()];
    // Same changes: the loser skips with the winner's ID, whether it loses at prepare or at the txn.
    const a = await begun(paused, 'et-race', [put('et-race/v', 'same')]);
    const b = await begun(successor, 'et-race', [put('et-race/v', 'same')]);
    await a.prepare(keyBytes('et-race'));
    await b.prepare(keyBytes('et-race'));
    const [idA, idB] = await Promise.all([a.commit(keyBytes('et-race')), b.commit(keyBytes('et-race'))]);
    assert.equal(toHex(idA), toHex(idB));
    const revisions = (await etcd().get(`${PREFIX}et-race/v`).exec()).kvs[0]?.version;
    assert.equal(revisions, '1', 'the key was written once');

    // Other changes: the loser fails with MARKER_CONFLICT, its change unapplied.
    const first = await begun(paused, 'et-race-2', [put('et-race-2/v', 'a')]);
    const second = await begun(successor, 'et-race-2', [put('et-race-2/v', 'b')]);
    await first.commit(keyBytes('et-race-2'));
    await assert.rejects(second.commit(keyBytes('et-race-2')), { code: 'MARKER_CONFLICT' });
    assert.equal(await get('et-race-2/v'), 'a');
  });

  it(`takes ${ETCD_MAX_CHANGED_KEYS} keys in one session and refuses the next at apply`, async (t) => {
    if (!requireServer(t)) return;
    const store = await open();
    const session = await begun(
      store,
      'et-ops',
      Array.from({ length: ETCD_MAX_CHANGED_KEYS }, (_, i) => put(`et-ops/${i}`, String(i))),
    );
    await session.apply(put('et-ops/0', 'again'));
    await assert.rejects(session.apply(put('et-ops/overflow', 'x')), (e: unknown) => {
      assert.ok(e instanceof TooManyOperationsError);
      assert.equal(e.code, 'PAYLOAD_TOO_LARGE');
      return true;
    });
    await session.cancel();

    const full = await begun(
      store,
      'et-ops-full',
      Array.from({ length: ETCD_MAX_CHANGED_KEYS }, (_, i) => put(`et-ops-full/${i}`, String(i))),
    );
    await full.commit(keyBytes('et-ops-full'));
    const { kvs } = await etcd().getAll().prefix(`${PREFIX}et-ops-full/`).exec();
    assert.equal(kvs.length, ETCD_MAX_CHANGED_KEYS);
  });

  it('maps a server with a lower --max-txn-ops refusing the commit to TooManyOperationsError', async (t) => {
    if (!requireServer(t)) return;
    const small = await startEtcd({ extraArgs: ['--max-txn-ops', '4'] });
    try {
      const store = await open({ endpoints: small.endpoints });
      const session = await begun(
        store,
        'et-small',
        Array.from({ length: 4 }, (_, i) => put(`et-small/${i}`, 'x')),
      );
      await assert.rejects(session.commit(keyBytes('et-small')), { code: 'PAYLOAD_TOO_LARGE', message: /--max-txn-ops is below 128/ });
      await session.cancel();
    } finally {
      await small.cleanup();
    }
  });

  it("refuses changes to commitd's own keys", async (t) => {
    if (!requireServer(t)) return;
    const store = await open();
    const session = await begun(store, 'et-reserved', []);
    await assert.rejects(session.apply(put('commitd/sessions/other', 'forged')), BookkeepingError);
    await session.cancel();
    assert.equal(await marker('other'), null);
  });

  it("defaults to the coordinator's etcd endpoints and needs some", async (t) => {
    if (!requireServer(t)) return;
    const store = await open({}, {});
    await commitOnce(store, 'et-default', [put('et-default/v', '1')]);
    assert.equal(await get('et-default/v'), '1');
    assert.throws(() => etcdStoreType.create({ prefix: PREFIX }, baseCtx), { code: 'INVALID_REQUEST' });
  });
});

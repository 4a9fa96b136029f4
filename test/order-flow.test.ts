/**
 * examples/order-flow end to end: one key writes the order row to PostgreSQL, publishes
 * `order.created` to NATS JetStream and reserves stock at the example's stock service (an
 * `http` participant on the SDK's barrier, on its own PostgreSQL database). commitd is
 * SIGKILLed at every failpoint, in a one-shot and in an interactive session; after a
 * restart the order exists once, the event once, the reservation once (confirmed, the
 * stock taken once, nothing left reserved).
 */
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { sessionIdOfChanges } from '../src/core/session-id.ts';
import { EVENTS_STREAM, ORDERS_SCHEMA, orderChanges, orderKey, type Order } from '../examples/order-flow/order.ts';
import { startStockService, type StockService } from '../examples/order-flow/stock-service.ts';
import { makeTempDir, removeTempDir } from './harness/child.ts';
import { natsBinary, startNats, type NatsServer } from './harness/nats.ts';
import { postgresBinDir, startPostgres, type PostgresServer } from './harness/postgres.ts';
import { skipUnlessFound } from './harness/require.ts';
import { natsReader, type NatsReader } from './support/nats.ts';
import { startProcess, type ProcessServiceOptions } from './support/process.ts';

const POINTS = [
  'begin.afterRecord',
  'commit.afterIntent',
  'commit.afterStore.1',
  'commit.afterStore.2',
  'commit.afterStore.3',
  'commit.beforeResult',
  'recovery.afterAdopt',
];
const INITIAL = 1_000;

type Request = (m: string, p: string, b?: unknown) => Promise<{ status: number; body: Record<string, unknown> }>;

async function placeOrder(request: Request, mode: 'one-shot' | 'interactive', order: Order) {
  const key = orderKey(order);
  const changes = orderChanges(order);
  if (mode === 'one-shot') return request('POST', '/v1/commits', { key, changes });
  await request('POST', '/v1/sessions', { key, stores: Object.keys(changes) });
  for (const [store, list] of Object.entries(changes)) await request('POST', `/v1/sessions/${key}/changes`, { store, changes: list });
  return request('POST', `/v1/sessions/${key}/commit`);
}

describe('examples/order-flow: the order, its event and its reservation once, whatever commitd crashes at', {
  skip: skipUnlessFound({ PostgreSQL: postgresBinDir(), 'nats-server': natsBinary() }),
}, () => {
  const root = makeTempDir('order-flow');
  let postgres: PostgresServer;
  let nats: NatsServer;
  let reader: NatsReader;
  let stock: StockService;
  let orders: pg.Pool;

  before(async () => {
    [postgres, nats] = await Promise.all([startPostgres(), startNats()]);
    orders = new pg.Pool({ connectionString: postgres.connectionString });
    await orders.query(ORDERS_SCHEMA);
    await orders.query('CREATE DATABASE stock');
    stock = await startStockService({ connectionString: postgres.connectionString.replace(/\/postgres$/, '/stock'), initial: { widget: INITIAL } });
    reader = await natsReader(nats.url);
    await reader.addStream(EVENTS_STREAM.name, EVENTS_STREAM.subjects, 86_400);
  });
  after(async () => {
    await reader?.close();
    await stock?.close();
    await orders?.end();
    await Promise.all([postgres?.cleanup(), nats?.cleanup()]);
    removeTempDir(root);
  });

  /** What the three systems hold for `order`. */
  async function holdings(order: Order) {
    const rows = (await orders.query('SELECT count(*)::int AS n FROM orders WHERE id = $1', [order.id])).rows[0].n as number;
    const events = (await reader.messages(EVENTS_STREAM.name, 'order.created')).filter(
      (message) => (JSON.parse(new TextDecoder().decode(message.data)) as { orderId: string }).orderId === order.id,
    ).length;
    const confirmed = (await stock.pool.query("SELECT count(*)::int AS n FROM commitd_barrier WHERE key = $1 AND state = 'confirmed'", [orderKey(order)]))
      .rows[0].n as number;
    return { rows, events, confirmed };
  }

  let taken = 0;
  for (const point of POINTS) {
    for (const mode of ['one-shot', 'interactive'] as const) {
      it(`${mode}, SIGKILL at ${point}`, async () => {
        const dir = join(root, `${point}-${mode}`);
        mkdirSync(dir, { recursive: true });
        const order: Order = { id: `${mode}-${point}`, customer: 'acme', sku: 'widget', qty: 2 };
        const stores = [
          { name: 'orders', type: 'postgres', options: { connectionString: postgres.connectionString } },
          { name: 'events', type: 'nats', options: { servers: nats.url, stream: EVENTS_STREAM.name } },
          { name: 'stock', type: 'http', options: { baseUrl: stock.url, timeoutMs: 5000 } },
        ];
        const options: ProcessServiceOptions = { dir, stores };
        const firstPoint = point === 'recovery.afterAdopt' ? 'commit.afterIntent' : point;
        const doomed = await startProcess(options, `${firstPoint}=crash`);
        await assert.rejects(placeOrder(doomed.request, mode, order), 'the request must die with the process');
        assert.equal((await doomed.process.waitForExit(20_000)).signal, 'SIGKILL');
        if (point === 'recovery.afterAdopt') {
          const adopter = await startProcess(options, 'recovery.afterAdopt=crash', false);
          assert.equal((await adopter.process.waitForExit(20_000)).signal, 'SIGKILL');
        }

        const restarted = await startProcess(options);
        try {
          if (point === 'begin.afterRecord') {
            // Before the commit point: nothing anywhere, and the retry places the order.
            assert.deepEqual(await holdings(order), { rows: 0, events: 0, confirmed: 0 });
            const retried = await placeOrder(restarted.request, mode, order);
            assert.equal(retried.status, 200, JSON.stringify(retried.body));
          }
          const shown = await restarted.request('GET', `/v1/sessions/${orderKey(order)}`);
          assert.equal(shown.body.state, 'committed', JSON.stringify(shown.body));
          assert.equal(shown.body.sessionId, sessionIdOfChanges(orderChanges(order)));
          const again = await placeOrder(restarted.request, 'one-shot', order);
          assert.equal(again.status, 200, JSON.stringify(again.body));
          taken += order.qty;
          assert.deepEqual(await holdings(order), { rows: 1, events: 1, confirmed: 1 });
          const level = (await stock.pool.query("SELECT available, reserved FROM stock WHERE sku = 'widget'")).rows[0];
          assert.deepEqual(level, { available: INITIAL - taken, reserved: 0 }, 'the stock was taken once per order, nothing left reserved');
        } finally {
          await restarted.process.stop();
        }
      });
    }
  }

  it('an order the stock service refuses: 409 store_conflict, no order row, no event', async () => {
    const dir = join(root, 'refused');
    const order: Order = { id: 'too-many', customer: 'acme', sku: 'widget', qty: INITIAL * 10 };
    const service = await startProcess({
      dir,
      stores: [
        { name: 'orders', type: 'postgres', options: { connectionString: postgres.connectionString } },
        { name: 'events', type: 'nats', options: { servers: nats.url, stream: EVENTS_STREAM.name } },
        { name: 'stock', type: 'http', options: { baseUrl: stock.url } },
      ],
    });
    try {
      const refused = await placeOrder(service.request, 'one-shot', order);
      assert.equal(refused.status, 409, JSON.stringify(refused.body));
      assert.equal(refused.body.code, 'store_conflict');
      assert.equal((refused.body.participant as { code?: string }).code, 'out_of_stock');
      assert.deepEqual(await holdings(order), { rows: 0, events: 0, confirmed: 0 });
    } finally {
      await service.process.stop();
    }
  });
});

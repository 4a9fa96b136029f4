/**
 * Creates what the order flow needs once: the `orders` table in ORDERS_DATABASE_URL and the
 * JetStream stream ORDERS on `order.>` (NATS_URL) with a duplicate window of a day — at
 * least commitd's retention, which the `nats` store checks when it opens.
 *
 *   ORDERS_DATABASE_URL=postgres://postgres@127.0.0.1:5432/orders NATS_URL=nats://127.0.0.1:4222 npx tsx examples/order-flow/setup.ts
 */
import { jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import pg from 'pg';
import { EVENTS_STREAM, ORDERS_SCHEMA } from './order.ts';

const client = new pg.Client({ connectionString: process.env.ORDERS_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/orders' });
await client.connect();
await client.query(ORDERS_SCHEMA);
await client.end();

const nc = await connect({ servers: process.env.NATS_URL ?? 'nats://127.0.0.1:4222' });
const jsm = await jetstreamManager(nc);
const DAY_NANOS = 86_400 * 1_000_000_000;
await jsm.streams.add({ name: EVENTS_STREAM.name, subjects: [...EVENTS_STREAM.subjects], duplicate_window: DAY_NANOS }).catch(async (err: unknown) => {
  // Already there: make sure its window is long enough.
  await jsm.streams.update(EVENTS_STREAM.name, { subjects: [...EVENTS_STREAM.subjects], duplicate_window: DAY_NANOS }).catch(() => Promise.reject(err));
});
await nc.close();
process.stdout.write('orders table and ORDERS stream ready\n');

/**
 * Places one order through commitd: `npx tsx examples/order-flow/place-order.ts <id> <customer> <sku> <qty>`
 * (COMMITD_URL, default http://127.0.0.1:8080). Run it twice, crash commitd in between:
 * the order, its event and its reservation each exist once.
 */
import { CommitdClient, isApiError } from '@commitd/client';
import { orderChanges, orderKey, type Order } from './order.ts';

const [id, customer, sku, qty] = process.argv.slice(2);
if (!id || !customer || !sku || !qty) {
  process.stderr.write('usage: place-order.ts <id> <customer> <sku> <qty>\n');
  process.exit(2);
}
const order: Order = { id, customer, sku, qty: Number(qty) };
const client = new CommitdClient({ url: process.env.COMMITD_URL ?? 'http://127.0.0.1:8080' });
try {
  const committed = await client.commit(orderKey(order), orderChanges(order));
  process.stdout.write(`order ${order.id} committed as ${committed.sessionId}\n`);
} catch (error) {
  // The stock service refused the reservation: nothing was written anywhere.
  if (isApiError(error, 'store_conflict')) {
    process.stderr.write(`order ${order.id} refused: ${error.message}\n`);
    process.exit(1);
  }
  throw error;
}

/**
 * One order as one commitd key: the order row in PostgreSQL (`orders`), the event
 * `order.created` on NATS JetStream (`events`) and the stock reservation at the stock
 * service (`stock`, an `http` participant). The changes come from the order alone — no
 * clock, no random — so a retry under the same key sends the very same changes.
 */
import type { Changes } from '@commitd/client';

export interface Order {
  readonly id: string;
  readonly customer: string;
  readonly sku: string;
  readonly qty: number;
}

/** The order's idempotency key. */
export const orderKey = (order: Order) => `order-${order.id}`;

/** The table the `orders` store writes (create it once in the orders database). */
export const ORDERS_SCHEMA = 'CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, customer TEXT NOT NULL, sku TEXT NOT NULL, qty INTEGER NOT NULL)';

/** The stream the `events` store publishes to (create it once, with a duplicate window ≥ commitd's retention). */
export const EVENTS_STREAM = { name: 'ORDERS', subjects: ['order.>'] } as const;

export function orderChanges(order: Order): Changes {
  return {
    orders: [{ sql: 'INSERT INTO orders (id, customer, sku, qty) VALUES ($1, $2, $3, $4)', params: [order.id, order.customer, order.sku, order.qty] }],
    events: [{ subject: 'order.created', data: { orderId: order.id, customer: order.customer, sku: order.sku, qty: order.qty } }],
    stock: [{ action: 'reserve', body: { sku: order.sku, qty: order.qty } }],
  };
}

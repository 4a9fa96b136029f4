/**
 * The stock service of the order flow: a participant of commitd's `http` store type,
 * reserving stock at try, taking it for good at confirm and putting it back at cancel —
 * each step in one PostgreSQL transaction with the SDK's barrier, so that commitd's repeated
 * or late calls are harmless.
 *
 *   DATABASE_URL=postgres://localhost/stock PORT=8090 npx tsx examples/order-flow/stock-service.ts
 *
 * Its commitd store: `{"name": "stock", "type": "http", "options": {"baseUrl": "http://127.0.0.1:8090/stock"}}`.
 * A change: `{"action": "reserve", "body": {"sku": "widget", "qty": 2}}`.
 */
import Fastify, { type FastifyInstance } from 'fastify';
import pg from 'pg';
import { ParticipantRefusal, participantRoutes, postgresParticipant, type ParticipantCall } from '@commitd/client/participant';

/** The service's own tables: stock levels, and one row per reserved line of an attempt. */
const SCHEMA = `
CREATE TABLE IF NOT EXISTS stock (sku TEXT PRIMARY KEY, available INTEGER NOT NULL CHECK (available >= 0), reserved INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS reservations (key TEXT NOT NULL, attempt TEXT NOT NULL, sku TEXT NOT NULL, qty INTEGER NOT NULL, state TEXT NOT NULL)`;

/** What an attempt ($1 key, $2 attempt) holds reserved, per SKU. */
const RESERVED_LINES = "(SELECT sku, sum(qty) AS qty FROM reservations WHERE key = $1 AND attempt = $2 AND state = 'reserved' GROUP BY sku)";

interface Line {
  readonly sku: string;
  readonly qty: number;
}

/** The lines a try reserves; anything but `reserve {sku, qty}` is refused (422). */
function linesOf(call: ParticipantCall): Line[] {
  return call.changes.map((change) => {
    const body = change.body as { sku?: unknown; qty?: unknown } | undefined;
    if (change.action !== 'reserve' || typeof body?.sku !== 'string' || !Number.isInteger(body.qty) || (body.qty as number) < 1) {
      throw new ParticipantRefusal(`a change must be {"action": "reserve", "body": {"sku", "qty" >= 1}}`, { status: 422, code: 'bad_change' });
    }
    return { sku: body.sku, qty: body.qty as number };
  });
}

export interface StockService {
  readonly app: FastifyInstance;
  readonly pool: pg.Pool;
  /** The base URL of the participant (the store's `baseUrl`). */
  readonly url: string;
  close(): Promise<void>;
}

/** Starts the service on `connectionString`, with `initial` stock for SKUs not yet known. */
export async function startStockService(options: {
  connectionString: string;
  host?: string;
  port?: number;
  initial?: Readonly<Record<string, number>>;
}): Promise<StockService> {
  const pool = new pg.Pool({ connectionString: options.connectionString, max: 8 });
  await pool.query(SCHEMA);
  for (const [sku, available] of Object.entries(options.initial ?? {})) {
    await pool.query('INSERT INTO stock (sku, available) VALUES ($1, $2) ON CONFLICT DO NOTHING', [sku, available]);
  }
  const database = postgresParticipant(pool);
  await database.ensureSchema();

  const app = Fastify({ logger: false });
  await app.register(
    participantRoutes(database, {
      async try(call, tx) {
        for (const line of linesOf(call)) {
          const taken = await tx.query('UPDATE stock SET available = available - $1, reserved = reserved + $1 WHERE sku = $2 AND available >= $1', [
            line.qty,
            line.sku,
          ]);
          if (taken.rowCount !== 1) throw new ParticipantRefusal(`not enough ${line.sku} in stock for ${line.qty}`, { code: 'out_of_stock' });
          await tx.query("INSERT INTO reservations (key, attempt, sku, qty, state) VALUES ($1, $2, $3, $4, 'reserved')", [
            call.key,
            call.attempt,
            line.sku,
            line.qty,
          ]);
        }
      },
      async confirm(call, tx) {
        await tx.query(`UPDATE stock SET reserved = stock.reserved - r.qty FROM ${RESERVED_LINES} r WHERE r.sku = stock.sku`, [call.key, call.attempt]);
        await tx.query("UPDATE reservations SET state = 'confirmed' WHERE key = $1 AND attempt = $2", [call.key, call.attempt]);
      },
      async cancel(call, tx) {
        await tx.query(
          `UPDATE stock SET reserved = stock.reserved - r.qty, available = stock.available + r.qty FROM ${RESERVED_LINES} r WHERE r.sku = stock.sku`,
          [call.key, call.attempt],
        );
        await tx.query("UPDATE reservations SET state = 'cancelled' WHERE key = $1 AND attempt = $2", [call.key, call.attempt]);
      },
    }),
    { prefix: '/stock' },
  );
  const address = await app.listen({ host: options.host ?? '127.0.0.1', port: options.port ?? 0 });
  return {
    app,
    pool,
    url: `${address}/stock`,
    async close() {
      await app.close();
      await pool.end();
    },
  };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const service = await startStockService({
    connectionString: process.env.DATABASE_URL ?? 'postgres://localhost/stock',
    port: Number(process.env.PORT ?? 8090),
    initial: { widget: 100, gadget: 10 },
  });
  process.stdout.write(`stock service listening at ${service.url}\n`);
}

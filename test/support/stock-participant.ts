/**
 * A small real participant service for tests: a stock service on fastify and SQLite that
 * reserves stock at try, makes it final at confirm and releases it at cancel, with the
 * SDK's barrier (`@commitd/client/participant`) around each step. It listens on a free
 * loopback port, journals every call it receives (for ordering checks), and can be told to
 * misbehave on a phase — answer a status, or answer late — to inject what a healthy
 * service does not do on its own.
 */
import { join } from 'node:path';
import Database from 'better-sqlite3';
import Fastify from 'fastify';
import {
  ParticipantRefusal,
  participantRoutes,
  sqliteParticipant,
  type ParticipantCall,
  type ParticipantPhase,
} from '../../packages/client/src/participant.ts';

/** One call as the service received it, and how it answered. */
export interface JournalEntry {
  readonly phase: ParticipantPhase;
  readonly key: string;
  readonly attempt: string;
  readonly status: number;
  readonly at: number;
}

/** A misbehaviour for the next `times` calls of a phase. */
export type Fault = { readonly status: number; readonly times: number } | { readonly delayMs: number; readonly times: number };

export interface StockParticipant {
  readonly url: string;
  readonly dbPath: string;
  readonly journal: JournalEntry[];
  /** Calls as they arrive (before any fault or answer); `status` is 0. */
  readonly received: JournalEntry[];
  /** Injects a fault on a phase (replacing any earlier one). */
  fault(phase: ParticipantPhase, fault: Fault): void;
  /** Confirmed attempts under `key`: the effect a user relies on landing once. */
  confirmed(key: string): number;
  /** Units of `sku` reserved but not yet confirmed or released. */
  reserved(sku: string): number;
  available(sku: string): number;
  /** The barrier's state of each attempt of `key`. */
  attempts(key: string): { attempt: string; state: string }[];
  close(): Promise<void>;
}

/** The stock every new service starts with. */
export const INITIAL_STOCK: Readonly<Record<string, number>> = { widget: 1000, gadget: 2 };

interface Reserve {
  readonly sku: string;
  readonly qty: number;
}

function reserveOf(call: ParticipantCall, index: number): Reserve | undefined {
  const change = call.changes[index];
  if (!change) return undefined;
  if (change.action === 'note') return undefined;
  if (change.action !== 'reserve') throw new ParticipantRefusal(`unknown action ${JSON.stringify(change.action)}`, { status: 422, code: 'unknown_action' });
  const body = change.body as { sku?: unknown; qty?: unknown } | undefined;
  if (typeof body?.sku !== 'string' || !Number.isInteger(body.qty) || (body.qty as number) < 1) {
    throw new ParticipantRefusal('reserve needs {sku, qty >= 1}', { status: 422, code: 'bad_reserve' });
  }
  return { sku: body.sku, qty: body.qty as number };
}

/** Starts the stock service on a SQLite file in `dir`. */
export async function startStockParticipant(dir: string, name = 'stock'): Promise<StockParticipant> {
  const dbPath = join(dir, `${name}-participant.db`);
  const db = new Database(dbPath);
  db.pragma('journal_mode = WAL');
  db.exec(
    'CREATE TABLE IF NOT EXISTS stock (sku TEXT PRIMARY KEY, available INTEGER NOT NULL CHECK (available >= 0), reserved INTEGER NOT NULL DEFAULT 0);' +
      'CREATE TABLE IF NOT EXISTS reservations (key TEXT NOT NULL, attempt TEXT NOT NULL, sku TEXT NOT NULL, qty INTEGER NOT NULL, state TEXT NOT NULL)',
  );
  for (const [sku, available] of Object.entries(INITIAL_STOCK)) db.prepare('INSERT OR IGNORE INTO stock (sku, available) VALUES (?, ?)').run(sku, available);
  const database = sqliteParticipant(db);
  await database.ensureSchema();

  const journal: JournalEntry[] = [];
  const received: JournalEntry[] = [];
  const entryOf = (request: { url: string; body: unknown }, status: number): JournalEntry => {
    const body = request.body as { key?: string; attempt?: string } | undefined;
    return { phase: request.url.split('/').pop() as ParticipantPhase, key: body?.key ?? '', attempt: body?.attempt ?? '', status, at: Date.now() };
  };
  const faults = new Map<ParticipantPhase, { fault: Fault; left: number }>();
  const app = Fastify({ logger: false });

  app.addHook('preHandler', async (request, reply) => {
    received.push(entryOf(request, 0));
    const phase = request.url.split('/').pop() as ParticipantPhase;
    const injected = faults.get(phase);
    if (!injected || injected.left <= 0) return;
    injected.left -= 1;
    if ('status' in injected.fault) {
      await reply
        .code(injected.fault.status)
        .type('application/problem+json')
        .send({ title: 'injected', detail: `injected ${injected.fault.status}`, status: injected.fault.status });
      return reply;
    }
    await new Promise((resolve) => setTimeout(resolve, (injected.fault as { delayMs: number }).delayMs));
  });
  // onSend, not onResponse: a call whose caller gave up (a timeout) is still answered, and journaled.
  app.addHook('onSend', async (request, reply, payload) => {
    journal.push(entryOf(request, reply.statusCode));
    return payload;
  });

  await app.register(
    participantRoutes(database, {
      try(call, tx) {
        for (let i = 0; i < call.changes.length; i++) {
          const reserve = reserveOf(call, i);
          if (!reserve) continue;
          const taken = tx
            .prepare('UPDATE stock SET available = available - ?, reserved = reserved + ? WHERE sku = ? AND available >= ?')
            .run(reserve.qty, reserve.qty, reserve.sku, reserve.qty);
          if (taken.changes !== 1) throw new ParticipantRefusal(`not enough ${reserve.sku} in stock for ${reserve.qty}`, { code: 'out_of_stock' });
          tx.prepare("INSERT INTO reservations (key, attempt, sku, qty, state) VALUES (?, ?, ?, ?, 'reserved')").run(
            call.key,
            call.attempt,
            reserve.sku,
            reserve.qty,
          );
        }
      },
      confirm(call, tx) {
        for (const row of tx
          .prepare("SELECT sku, qty FROM reservations WHERE key = ? AND attempt = ? AND state = 'reserved'")
          .all(call.key, call.attempt) as Reserve[]) {
          tx.prepare('UPDATE stock SET reserved = reserved - ? WHERE sku = ?').run(row.qty, row.sku);
        }
        tx.prepare("UPDATE reservations SET state = 'confirmed' WHERE key = ? AND attempt = ?").run(call.key, call.attempt);
        // An attempt with notes only still counts as confirmed.
        tx.prepare("INSERT INTO reservations (key, attempt, sku, qty, state) VALUES (?, ?, '', 0, 'confirmed')").run(call.key, call.attempt);
      },
      cancel(call, tx) {
        for (const row of tx
          .prepare("SELECT sku, qty FROM reservations WHERE key = ? AND attempt = ? AND state = 'reserved'")
          .all(call.key, call.attempt) as Reserve[]) {
          tx.prepare('UPDATE stock SET reserved = reserved - ?, available = available + ? WHERE sku = ?').run(row.qty, row.qty, row.sku);
        }
        tx.prepare("UPDATE reservations SET state = 'cancelled' WHERE key = ? AND attempt = ?").run(call.key, call.attempt);
      },
    }),
  );
  const address = await app.listen({ host: '127.0.0.1', port: 0 });
  const read = new Database(dbPath, { readonly: true });
  return {
    url: address,
    dbPath,
    journal,
    received,
    fault: (phase, fault) => faults.set(phase, { fault, left: fault.times }),
    confirmed: (key) =>
      (read.prepare("SELECT count(DISTINCT attempt) AS n FROM reservations WHERE key = ? AND state = 'confirmed'").get(key) as { n: number }).n,
    reserved: (sku) => (read.prepare('SELECT reserved FROM stock WHERE sku = ?').get(sku) as { reserved: number } | undefined)?.reserved ?? 0,
    available: (sku) => (read.prepare('SELECT available FROM stock WHERE sku = ?').get(sku) as { available: number } | undefined)?.available ?? 0,
    attempts: (key) =>
      read.prepare('SELECT attempt, state FROM commitd_barrier WHERE key = ? ORDER BY updated_at').all(key) as { attempt: string; state: string }[],
    async close() {
      await app.close();
      read.close();
      db.close();
    },
  };
}

/** Ordering rules of the protocol over a journal, for one key: no confirm before its try, no cancel after a confirm. */
export function protocolViolations(journal: readonly JournalEntry[], key: string): string[] {
  const problems: string[] = [];
  const tried = new Set<string>();
  const confirmed = new Set<string>();
  for (const entry of journal.filter((e) => e.key === key)) {
    const ok = entry.status >= 200 && entry.status < 300;
    if (entry.phase === 'try' && ok) tried.add(entry.attempt);
    if (entry.phase === 'confirm') {
      if (!tried.has(entry.attempt)) problems.push(`confirm of ${entry.attempt} before its try`);
      if (ok) confirmed.add(entry.attempt);
    }
    if (entry.phase === 'cancel' && confirmed.has(entry.attempt)) problems.push(`cancel of ${entry.attempt} after its confirm`);
  }
  return problems;
}

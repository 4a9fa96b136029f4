/**
 * The floor: the I/O one one-shot session needs, done directly in-process with no HTTP,
 * no validation, no hashing and no coordinator — the coordinator KV transactions commitd
 * performs per session (through the same `EtcdKv` / `SqliteKv` classes), and one sqlite
 * transaction per store (marker + row, `BEGIN IMMEDIATE` … `COMMIT`, WAL, synchronous=FULL,
 * as the sqlite store type configures its files).
 *
 * Two orders of that work:
 * - `back-to-back`: check the markers, commit point (KV txn 1), then each store's
 *   transaction in one go, then the result (KV txn 2). Nothing is held across a KV round
 *   trip: the least any design could do with these stores. This is "the floor".
 * - `held`: the order the protocol prescribes, one transaction per session — each store
 *   takes its file's write lock and runs its statements at prepare, keeps the transaction
 *   open across the commit point, and commits after it. Same I/O, but every file's single
 *   writer is held for a KV round trip and an fsync. This is how the sqlite store worked
 *   before group commit (it now hands the lock over at the commit point and commits
 *   decided sessions in groups); kept as the reference for what that design allowed.
 * @module
 */
import { Mutex } from 'async-mutex';
import Database from 'better-sqlite3';
import type { Kv } from '../src/kv/kv.ts';
import { INSERT_SQL, STORE_NAMES, changeFor } from './workload.ts';

export type FloorOrder = 'back-to-back' | 'held';

/** One store file opened as the sqlite store type opens it: a writer and a reader connection. */
class FloorStore {
  /** FIFO, as the sqlite store's write lock. */
  readonly lock = new Mutex();
  readonly #writer: Database.Database;
  readonly #reader: Database.Database;
  readonly #findMarker: Database.Statement<[string], { session_id: string }>;
  readonly #insertMarker: Database.Statement<[string, string, string]>;
  readonly #insertRow: Database.Statement<[string, string]>;

  constructor(path: string) {
    this.#writer = new Database(path, { timeout: 0 });
    this.#reader = new Database(path, { timeout: 0 });
    this.#writer.pragma('journal_mode = WAL');
    this.#writer.pragma('synchronous = FULL');
    this.#reader.pragma('query_only = ON');
    this.#findMarker = this.#reader.prepare('SELECT session_id FROM commitd_sessions WHERE key = ?');
    this.#insertMarker = this.#writer.prepare('INSERT INTO commitd_sessions (key, session_id, committed_at) VALUES (?, ?, ?)');
    this.#insertRow = this.#writer.prepare(INSERT_SQL);
  }

  /** Begin: is this key already committed here? */
  hasMarker(key: string): boolean {
    return this.#findMarker.get(key) !== undefined;
  }

  /** Prepare: take the file's write lock and run marker + row, leaving the transaction open. */
  prepare(key: string, id: string, payload: string): void {
    this.#writer.exec('BEGIN IMMEDIATE');
    try {
      this.#insertMarker.run(key, id, new Date().toISOString());
      this.#insertRow.run(...changeFor(key, payload).params);
    } catch (err) {
      this.#writer.exec('ROLLBACK');
      throw err;
    }
  }

  commit(): void {
    this.#writer.exec('COMMIT');
  }

  rollback(): void {
    if (this.#writer.inTransaction) this.#writer.exec('ROLLBACK');
  }

  close(): void {
    this.#writer.close();
    this.#reader.close();
  }
}

/** What the floor needs: a KV (already open) and the two store files (tables created). */
export interface FloorOptions {
  readonly kv: Kv;
  readonly storePaths: readonly string[];
  readonly order: FloorOrder;
  /** Retention of results, as commitd's default (24 h): the same shared TTL lease path. */
  readonly retentionSeconds?: number;
}

/** Placeholder IDs: the floor hashes nothing (hashing is measured on its own). */
const STORE_ID = '0123456789abcdef0123456789abcdef';

/** The in-process floor; `session(key, payload)` does one session's I/O. */
export class Floor {
  readonly #kv: Kv;
  readonly #stores: FloorStore[];
  readonly #order: FloorOrder;
  readonly #retentionSeconds: number;
  readonly #owner = `floor-${process.pid}`;

  constructor(options: FloorOptions) {
    this.#kv = options.kv;
    this.#stores = options.storePaths.map((path) => new FloorStore(path));
    this.#order = options.order;
    this.#retentionSeconds = options.retentionSeconds ?? 24 * 3600;
  }

  async session(key: string, payload: string): Promise<void> {
    for (const store of this.#stores) if (store.hasMarker(key)) throw new Error(`${key} is already committed`);
    const change = changeFor(key, payload);
    // The session record at the commit point, shaped like commitd's (an inline log).
    const record = JSON.stringify({
      state: 'committing',
      stores: STORE_NAMES,
      owner: this.#owner,
      startedAt: new Date().toISOString(),
      sessionId: STORE_ID,
      oneShot: true,
      log: Object.fromEntries(STORE_NAMES.map((name) => [name, [change]])),
    });
    const held: FloorStore[] = [];
    try {
      if (this.#order === 'held') {
        for (const store of this.#stores) {
          await store.lock.acquire();
          held.push(store);
          store.prepare(key, STORE_ID, payload);
        }
      }
      const revision = await this.#kv.txn([
        { type: 'check', key: `results/${key}`, exists: false },
        { type: 'create', key: `sessions/${key}`, value: record },
      ]);
      for (const store of this.#stores) {
        if (this.#order === 'back-to-back') store.prepare(key, STORE_ID, payload);
        store.commit();
        if (this.#order === 'held') {
          held.shift();
          store.lock.release();
        }
      }
      const result = JSON.stringify({
        sessionId: STORE_ID,
        stores: Object.fromEntries(STORE_NAMES.map((name) => [name, STORE_ID])),
        committedAt: new Date().toISOString(),
      });
      await this.#kv.txn([
        { type: 'create', key: `results/${key}`, value: result, options: { ttlSeconds: this.#retentionSeconds } },
        { type: 'delete', key: `sessions/${key}`, revision },
      ]);
    } finally {
      for (const store of held) {
        store.rollback();
        store.lock.release();
      }
    }
  }

  close(): void {
    for (const store of this.#stores) store.close();
  }
}

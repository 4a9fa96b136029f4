/**
 * The event loop's side of a `sqlite` store: the thread that owns its database
 * (`worker.ts`) and, per session, a driver whose every call is a message to it. Nothing on
 * the event loop waits on SQLite: a long statement (up to the store's `statementTimeout`),
 * a COMMIT and its fsync block the store's thread only, so `/healthz` and the other stores
 * go on.
 * @module
 */
import { Worker } from 'node:worker_threads';
import type { StoreDriver } from '../helper.ts';
import type { SqliteOptions } from './database.ts';
import { reviveError, type DriverCall, type DriverReply } from './messages.ts';
import { threadEntry, type ThreadEntry } from './thread-entry.ts';
import type { SqliteChange } from './statements.ts';

type Method = DriverCall['method'];
type Pending = { resolve: (value: unknown) => void; reject: (err: Error) => void };

export class SqliteThread {
  readonly #worker: Worker;
  readonly #pending = new Map<number, Pending>();
  #nextCall = 1;
  #nextSession = 1;
  #exited: Error | undefined;

  private constructor(worker: Worker) {
    this.#worker = worker;
    worker.on('message', (reply: DriverReply) => this.#settle(reply));
    worker.on('error', (err) => this.#fail(err));
    worker.on('exit', (code) => this.#fail(new Error(`the sqlite store's thread exited (code ${code})`)));
  }

  /**
   * Starts the store's thread and opens its database there. The thread runs the bundle of
   * `worker.ts` when it is current, the source through tsx otherwise (`thread-entry.ts`; a
   * loader registered on the main thread does not reach a worker on Node 20).
   */
  static async open(options: SqliteOptions, entry: ThreadEntry = threadEntry()): Promise<SqliteThread> {
    const worker = new Worker(entry.url, { workerData: options, ...(entry.execArgv ? { execArgv: entry.execArgv } : {}) });
    const thread = new SqliteThread(worker);
    try {
      await new Promise((resolve, reject) => thread.#pending.set(0, { resolve, reject }));
    } catch (err) {
      await worker.terminate();
      throw err;
    }
    return thread;
  }

  /** A driver for one new session on this store. */
  driver(): StoreDriver<SqliteChange> {
    const session = this.#nextSession++;
    const call = <T>(method: Method, args: unknown[] = []) => this.#call(session, method, args) as Promise<T>;
    return {
      findMarker: (key) => call<Uint8Array | undefined>('findMarker', [key]),
      open: () => call<void>('open'),
      apply: (change) => call<void>('apply', [change]),
      openAndPrepare: (key, changes, id) => call<Uint8Array | undefined>('openAndPrepare', [key, changes, id]),
      savepoint: () => call<void>('savepoint'),
      rollbackToSavepoint: () => call<void>('rollbackToSavepoint'),
      releaseSavepoint: () => call<void>('releaseSavepoint'),
      prepare: (key, id) => call<void>('prepare', [key, id]),
      // Wants no answer: the thread acts on a session's messages in order, and the `commit`
      // (or `rollback`) that follows answers for it, its error included.
      decide: async () => this.#send(session, 'decide'),
      commit: (key, id) => call<void>('commit', [key, id]),
      rollback: () => call<void>('rollback'),
      // Each call is posted at once and the thread queues a prepare for the lock on arrival.
      queuesInCallOrder: true,
    };
  }

  /** Closes the database (sessions in flight are abandoned) and ends the thread. */
  async close(): Promise<void> {
    if (this.#exited) return;
    try {
      await this.#call(0, 'close', []);
    } finally {
      await this.#worker.terminate();
    }
  }

  #call(session: number, method: Method, args: unknown[]): Promise<unknown> {
    if (this.#exited) return Promise.reject(this.#exited);
    const id = this.#nextCall++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      this.#worker.postMessage({ id, session, method, args } as DriverCall);
    });
  }

  /** A call that wants no answer; a thread already gone fails the session's next call instead. */
  #send(session: number, method: Method): void {
    if (!this.#exited) this.#worker.postMessage({ session, method, args: [] } as DriverCall);
  }

  #settle(reply: DriverReply): void {
    const pending = this.#pending.get(reply.id);
    if (!pending) return;
    this.#pending.delete(reply.id);
    if (reply.error) pending.reject(reviveError(reply.error));
    else pending.resolve(reply.value);
  }

  /** The thread is gone: every call in flight, and every later one, fails. */
  #fail(err: Error): void {
    this.#exited ??= err;
    for (const pending of this.#pending.values()) pending.reject(err);
    this.#pending.clear();
  }
}

/**
 * The embedded KV on a thread of its own: the same {@link SqliteKv} runs in
 * `sqlite-worker.ts`, and this event-loop side turns every call into a message. The
 * file's transactions and their fsyncs then block that thread only: HTTP requests, the
 * stores' replies and timers go on while a group of writes becomes durable.
 * @module
 */
import { Worker } from 'node:worker_threads';
import type { Kv, KvEntry, KvLease, KvOp, KvWatch, KvWatchEvent, WriteOptions } from './kv.ts';
import { CommitdError } from '../errors/core.ts';
import { assertDistinctKeys, assertTtl } from './checks.ts';
import { UnavailableError } from './errors.ts';
import { type LeaseOwner, SqliteLease } from './sqlite-lease.ts';
import { type KvCall, type KvCallMethod, type KvMessage, reviveKvError, type WireOp, type WireWriteOptions } from './sqlite-messages.ts';
import type { SqliteKvOperation, SqliteKvOptions } from './sqlite.ts';

type Pending = { readonly resolve: (value: unknown) => void; readonly reject: (err: Error) => void };
type Watcher = { readonly onEvent: (event: KvWatchEvent) => void; readonly onError: (err: Error) => void };

/** The calls reported to `onOperation`, under the names the KV in the process uses. */
const OPERATION: Partial<Record<KvCallMethod, SqliteKvOperation>> = {
  get: 'get',
  list: 'list',
  create: 'create',
  update: 'update',
  delete: 'delete',
  txn: 'txn',
  grantLease: 'lease',
  revokeLease: 'lease',
  ping: 'ping',
};

export class SqliteKvThread implements Kv {
  readonly #worker: Worker;
  readonly #onOperation: SqliteKvOptions['onOperation'];
  readonly #pending = new Map<number, Pending>();
  readonly #watchers = new Map<number, Watcher>();
  readonly #keptAlive = new Set<SqliteLease>();
  #outbox: KvCall[] = [];
  #nextCall = 1;
  #nextWatch = 1;
  #gone: Error | undefined;

  private constructor(worker: Worker, onOperation: SqliteKvOptions['onOperation']) {
    this.#worker = worker;
    this.#onOperation = onOperation;
    worker.on('message', (messages: readonly KvMessage[]) => this.#receive(messages));
    worker.on('error', (err) => this.#fail(new UnavailableError(`the embedded kv's thread failed: ${err.message}`, { cause: err })));
    worker.on('exit', (code) => this.#fail(new UnavailableError(`the embedded kv's thread exited (code ${code})`)));
  }

  /** Starts the thread and opens the file there; rejects as the KV's constructor would throw. */
  static async open(options: SqliteKvOptions): Promise<SqliteKvThread> {
    const { onOperation, ...threadOptions } = options;
    const worker = new Worker(new URL('./sqlite-worker-entry.mjs', import.meta.url), { workerData: threadOptions });
    const thread = new SqliteKvThread(worker, onOperation);
    try {
      await new Promise((resolve, reject) => thread.#pending.set(0, { resolve, reject }));
    } catch (err) {
      await worker.terminate();
      throw err;
    }
    return thread;
  }

  /** {@inheritDoc Kv.get} */
  get(key: string): Promise<KvEntry | undefined> {
    return this.#call('get', [key]) as Promise<KvEntry | undefined>;
  }

  /** {@inheritDoc Kv.list} */
  list(prefix: string): Promise<KvEntry[]> {
    return this.#call('list', [prefix]) as Promise<KvEntry[]>;
  }

  /** {@inheritDoc Kv.create} */
  create(key: string, value: string, options?: WriteOptions): Promise<number> {
    return this.#call('create', [key, value, wireOptions(options)]) as Promise<number>;
  }

  /** {@inheritDoc Kv.update} */
  update(key: string, value: string, revision: number, options?: WriteOptions): Promise<number> {
    return this.#call('update', [key, value, revision, wireOptions(options)]) as Promise<number>;
  }

  /** {@inheritDoc Kv.delete} */
  async delete(key: string, revision: number): Promise<void> {
    await this.#call('delete', [key, revision]);
  }

  /** {@inheritDoc Kv.txn} */
  async txn(ops: readonly KvOp[]): Promise<number> {
    assertDistinctKeys(ops);
    return this.#call('txn', [ops.map(wireOp)]) as Promise<number>;
  }

  /** {@inheritDoc Kv.watch} The thread compares and sends what changed. */
  watch(prefix: string, onEvent: (event: KvWatchEvent) => void, onError?: (err: Error) => void): KvWatch {
    const watch = this.#nextWatch++;
    const report = onError ?? (() => undefined);
    this.#watchers.set(watch, { onEvent, onError: report });
    this.#call('watch', [watch, prefix]).catch((err: Error) => report(err));
    return {
      close: () => {
        if (!this.#watchers.delete(watch)) return;
        this.#call('unwatch', [watch, prefix]).catch(() => undefined);
      },
    };
  }

  /** {@inheritDoc Kv.grantLease} The lease is kept alive from here, by renewal messages. */
  async grantLease(ttlSeconds: number): Promise<KvLease> {
    assertTtl(ttlSeconds);
    const sentAt = performance.now();
    const id = (await this.#call('grantLease', [ttlSeconds])) as string;
    return new SqliteLease(id, ttlSeconds, this.#leaseOwner, sentAt);
  }

  /** {@inheritDoc Kv.ping} */
  async ping(): Promise<void> {
    await this.#call('ping', []);
  }

  /** {@inheritDoc Kv.close} Stops every lease's keep-alive, closes the file and ends the thread. */
  async close(): Promise<void> {
    for (const lease of this.#keptAlive) lease.release();
    this.#watchers.clear();
    if (this.#gone) return;
    try {
      await this.#call('close', []);
    } finally {
      this.#gone ??= new UnavailableError('the embedded kv is closed');
      await this.#worker.terminate();
    }
  }

  readonly #leaseOwner: LeaseOwner = {
    keptAlive: this.#keptAlive,
    renew: (lease) => this.#call('renewLease', [lease.id, lease.ttlSeconds]) as Promise<boolean>,
    revoke: async (lease) => {
      await this.#call('revokeLease', [lease.id]);
    },
  };

  #call<M extends KvCallMethod>(method: M, args: Extract<KvCall, { method: M }>['args']): Promise<unknown> {
    if (this.#gone) return Promise.reject(this.#gone);
    const id = this.#nextCall++;
    const operation = OPERATION[method];
    const startedAt = operation === undefined ? 0 : performance.now();
    return new Promise((resolve, reject) => {
      this.#pending.set(id, {
        resolve: (value) => {
          if (operation !== undefined) this.#onOperation?.(operation, performance.now() - startedAt, true);
          resolve(value);
        },
        reject: (err) => {
          // As in the process: the KV answered unless it was unavailable or failed unexpectedly.
          const answered = err instanceof CommitdError && !(err instanceof UnavailableError);
          if (operation !== undefined) this.#onOperation?.(operation, performance.now() - startedAt, answered);
          reject(err);
        },
      });
      if (this.#outbox.length === 0) setImmediate(this.#flush);
      this.#outbox.push({ id, method, args } as KvCall);
    });
  }

  /**
   * The calls of one turn of the event loop leave as one message (the thread answers them
   * with one too): a message costs both threads more than the work of a small call, and
   * the thread would have grouped these writes into one transaction anyway.
   */
  readonly #flush = (): void => {
    const calls = this.#outbox;
    this.#outbox = [];
    // A thread that is gone already failed every pending call.
    if (!this.#gone) this.#worker.postMessage(calls);
  };

  #receive(messages: readonly KvMessage[]): void {
    for (const message of messages) this.#settle(message);
  }

  #settle(message: KvMessage): void {
    if ('watch' in message) {
      const watcher = this.#watchers.get(message.watch);
      if (watcher === undefined) return;
      if (message.event) watcher.onEvent(message.event);
      else if (message.error) watcher.onError(reviveKvError(message.error));
      return;
    }
    const pending = this.#pending.get(message.id);
    if (pending === undefined) return;
    this.#pending.delete(message.id);
    if (message.error) pending.reject(reviveKvError(message.error));
    else pending.resolve(message.value);
  }

  /** The thread is gone: every call in flight, and every later one, fails as unavailable. */
  #fail(err: Error): void {
    this.#gone ??= err;
    for (const pending of this.#pending.values()) pending.reject(this.#gone);
    this.#pending.clear();
  }
}

function wireOptions(options: WriteOptions | undefined): WireWriteOptions | undefined {
  if (options === undefined) return undefined;
  if (options.lease !== undefined) return { leaseId: options.lease.id };
  return options.ttlSeconds === undefined ? {} : { ttlSeconds: options.ttlSeconds };
}

function wireOp(op: KvOp): WireOp {
  return op.type === 'create' || op.type === 'update' ? { ...op, options: wireOptions(op.options) } : op;
}

/**
 * The embedded backend of the KV contract: one SQLite file through `better-sqlite3`.
 *
 * Durable across a crash of the process or the machine (WAL, `synchronous=FULL`), except a
 * transaction asked to be lazy (`TxnOptions.lazySync`): it commits with `synchronous=NORMAL`,
 * without an fsync, and becomes durable with the next write that fsyncs the WAL (an fsync
 * covers every earlier frame, and WAL recovery keeps a prefix of the log, so a machine
 * failure loses at most the lazy writes after the last durable one). One revision counter for the
 * whole file, so revisions strictly increase across all keys as in etcd. Expired values
 * and values of expired leases are invisible at once and deleted by a periodic sweep.
 * @module
 */
import { randomUUID } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import Database from 'better-sqlite3';
import type { Kv, KvEntry, KvLease, KvOp, KvWatch, KvWatchEvent, TxnOptions, WriteOptions } from './kv.ts';
import { SqliteWatchHub } from './sqlite-watch.ts';
import { type LeaseOwner, SqliteLease, ttlMs } from './sqlite-lease.ts';
import { assertDistinctKeys, assertTtl, describeTxnFailure } from './checks.ts';
import { AlreadyExistsError, ConstraintViolatedError, UnavailableError, VersionMismatchError } from './errors.ts';
import { CommitdError } from '../errors/core.ts';

/** Names passed to `onOperation`, one per call (the same names as the etcd backend). */
export type SqliteKvOperation = 'get' | 'list' | 'create' | 'update' | 'delete' | 'txn' | 'lease' | 'ping';

/** Options of {@link SqliteKv}. */
export interface SqliteKvOptions {
  /** The database file; its directory is created if missing. */
  readonly path: string;
  /** How long a write waits for another process's write lock, in ms (default 5000). */
  readonly timeoutMs?: number;
  /** How often expired values and leases are deleted, in ms (default 5000). */
  readonly sweepIntervalMs?: number;
  /** Called once per operation; `ok` is false only when the database did not answer. */
  readonly onOperation?: (op: SqliteKvOperation, durationMs: number, ok: boolean) => void;
  /** Most writes in one SQLite transaction (group commit; default 256, `1`: each write alone). */
  readonly maxGroup?: number;
}

const DEFAULT_TIMEOUT_MS = 5000;
const DEFAULT_SWEEP_INTERVAL_MS = 5000;

const SCHEMA = `
  CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    revision INTEGER NOT NULL,
    lease TEXT NULL,
    expires_at INTEGER NULL
  );
  CREATE INDEX IF NOT EXISTS kv_by_lease ON kv (lease) WHERE lease IS NOT NULL;
  CREATE INDEX IF NOT EXISTS kv_by_expiry ON kv (expires_at) WHERE expires_at IS NOT NULL;
  CREATE TABLE IF NOT EXISTS kv_revision (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    revision INTEGER NOT NULL
  );
  INSERT OR IGNORE INTO kv_revision (id, revision) VALUES (1, 0);
  CREATE TABLE IF NOT EXISTS leases (
    id TEXT PRIMARY KEY,
    ttl INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
  );
`;

/** A row is visible while neither its own TTL nor its lease has run out (`@now` in ms). */
const LIVE = `(kv.expires_at IS NULL OR kv.expires_at > @now)
  AND (kv.lease IS NULL OR EXISTS (SELECT 1 FROM leases WHERE leases.id = kv.lease AND leases.expires_at > @now))`;

interface EntryRow {
  readonly key: string;
  readonly value: string;
  readonly revision: number;
}

/** The columns a write sets besides key, value and revision. */
interface Expiry {
  readonly lease: string | null;
  readonly expires_at: number | null;
}

/** The prepared statements, compiled once per connection. */
interface Statements {
  readonly get: Database.Statement<{ key: string; now: number }, EntryRow>;
  readonly list: Database.Statement<{ prefix: string; now: number }, EntryRow>;
  readonly nextRevision: Database.Statement<[], { revision: number }>;
  readonly currentRevision: Database.Statement<[], { revision: number }>;
  readonly upsert: Database.Statement<EntryRow & Expiry>;
  readonly remove: Database.Statement<{ key: string }>;
  readonly liveLease: Database.Statement<{ id: string; now: number }, { id: string }>;
  readonly insertLease: Database.Statement<{ id: string; ttl: number; expires_at: number }>;
  readonly renewLease: Database.Statement<{ id: string; now: number; expires_at: number }>;
  readonly revokeKeys: Database.Statement<{ id: string }>;
  readonly revokeLease: Database.Statement<{ id: string }>;
  readonly sweepExpired: Database.Statement<{ now: number }>;
  readonly sweepLeaseKeys: Database.Statement<{ now: number }>;
  readonly sweepLeases: Database.Statement<{ now: number }>;
  /** `synchronous=NORMAL` for a group of lazy writes only, `FULL` again after it. */
  readonly syncLazy: Database.Statement<[]>;
  readonly syncFull: Database.Statement<[]>;
}

/** A write waiting for the next group (`SqliteKv.grouped`). */
interface PendingWrite {
  readonly op: SqliteKvOperation;
  readonly work: (now: number) => unknown;
  /** The keys it writes: watchers compare only after writes under a watched prefix. */
  readonly keys: readonly string[];
  /** `TxnOptions.lazySync`: a group commits without fsync only if every write in it is lazy. */
  readonly lazySync: boolean;
  readonly resolve: (value: unknown) => void;
  readonly reject: (error: unknown) => void;
}

/** Most writes in one SQLite transaction; the rest wait for the next turn of the event loop. */
const DEFAULT_MAX_GROUP = 256;

/**
 * KV in one SQLite file. Methods return promises for the contract's sake; the work is
 * synchronous. Several processes may share the file: writes take SQLite's write lock at
 * once (`BEGIN IMMEDIATE`) and wait up to `timeoutMs` for it. A write attached to a lease
 * that expired or was revoked fails with `ConstraintViolatedError`, as in the etcd backend.
 */
export class SqliteKv implements Kv {
  private readonly db: Database.Database;
  private readonly statements: Statements;
  private readonly onOperation: SqliteKvOptions['onOperation'];
  private readonly sweepTimer: NodeJS.Timeout;
  private readonly keptAlive = new Set<SqliteLease>();
  /** Watches are compared in-process after each write, and polled for other processes' writes. */
  private readonly watches: SqliteWatchHub;
  /** One transaction wrapper for every write; building one per operation showed in profiles. */
  private readonly inTransaction: Database.Transaction<(work: (now: number) => unknown) => unknown>;
  /** The same wrapper nested in a group's transaction: a SAVEPOINT per write. */
  private readonly inSavepoint: Database.Transaction<(work: (now: number) => unknown, now: number) => unknown>;
  private pending: PendingWrite[] = [];
  private readonly maxGroup: number;

  constructor(options: SqliteKvOptions) {
    mkdirSync(dirname(options.path), { recursive: true });
    this.db = new Database(options.path, { timeout: options.timeoutMs ?? DEFAULT_TIMEOUT_MS });
    this.db.pragma('journal_mode = WAL');
    // FULL syncs the WAL on every commit: a committed write survives a crash of the process or the machine.
    this.db.pragma('synchronous = FULL');
    // 2 MiB page cache instead of better-sqlite3's 16 MiB default: the KV's working set is small.
    this.db.pragma('cache_size = -2000');
    this.db.exec(SCHEMA);
    this.statements = prepare(this.db);
    this.inTransaction = this.db.transaction((work: (now: number) => unknown) => work(Date.now()));
    this.inSavepoint = this.db.transaction((work: (now: number) => unknown, now: number) => work(now));
    this.onOperation = options.onOperation;
    this.maxGroup = Math.max(1, options.maxGroup ?? DEFAULT_MAX_GROUP);
    this.sweepTimer = setInterval(() => this.sweep(), options.sweepIntervalMs ?? DEFAULT_SWEEP_INTERVAL_MS);
    this.sweepTimer.unref();
    this.watches = new SqliteWatchHub({
      list: (prefix) => this.statements.list.all({ prefix, now: Date.now() }).map(toEntry),
      currentRevision: () => this.statements.currentRevision.get()?.revision ?? 0,
    });
  }

  /** {@inheritDoc Kv.watch} In-process and polled: see `sqlite-watch.ts`. */
  watch(prefix: string, onEvent: (event: KvWatchEvent) => void, onError?: (err: Error) => void): KvWatch {
    return this.watches.watch(prefix, onEvent, onError);
  }

  /** {@inheritDoc Kv.get} Always linearizable: there is only one copy. */
  async get(key: string): Promise<KvEntry | undefined> {
    return this.run('get', () => this.liveEntry(key, Date.now()));
  }

  /** {@inheritDoc Kv.list} */
  async list(prefix: string): Promise<KvEntry[]> {
    return this.run('list', () => this.statements.list.all({ prefix, now: Date.now() }).map(toEntry));
  }

  /** {@inheritDoc Kv.create} A value whose TTL or lease has run out counts as absent. */
  async create(key: string, value: string, options?: WriteOptions): Promise<number> {
    return this.grouped(
      'create',
      (now) => {
        if (this.liveEntry(key, now) !== undefined) throw new AlreadyExistsError(key);
        return this.put(key, value, this.expiryOf(options, now), this.nextRevision());
      },
      [key],
    );
  }

  /**
   * {@inheritDoc Kv.update}
   * As in etcd, the new value keeps no TTL or lease unless `options` gives one.
   */
  async update(key: string, value: string, revision: number, options?: WriteOptions): Promise<number> {
    return this.grouped(
      'update',
      (now) => {
        if (this.liveEntry(key, now)?.revision !== revision) throw new VersionMismatchError(key, revision);
        return this.put(key, value, this.expiryOf(options, now), this.nextRevision());
      },
      [key],
    );
  }

  /** {@inheritDoc Kv.delete} */
  async delete(key: string, revision: number): Promise<void> {
    await this.grouped(
      'delete',
      (now) => {
        if (this.liveEntry(key, now)?.revision !== revision) throw new VersionMismatchError(key, revision);
        this.statements.remove.run({ key });
        this.nextRevision();
      },
      [key],
    );
  }

  /**
   * {@inheritDoc Kv.txn}
   * One SQLite transaction; every write of it gets the same new revision. Each key may
   * appear once (`TypeError` otherwise). A transaction without writes returns the current
   * revision.
   */
  async txn(ops: readonly KvOp[], options?: TxnOptions): Promise<number> {
    assertDistinctKeys(ops);
    return this.grouped(
      'txn',
      (now) => {
        if (!ops.every((op) => this.holds(op, now))) throw new ConstraintViolatedError(describeTxnFailure(ops));
        const expiries = ops.map((op) => (op.type === 'create' || op.type === 'update' ? this.expiryOf(op.options, now) : undefined));
        if (!ops.some((op) => op.type !== 'check')) return this.statements.currentRevision.get()?.revision ?? 0;
        const revision = this.nextRevision();
        for (const [index, op] of ops.entries()) this.apply(op, revision, expiries[index]);
        return revision;
      },
      ops.map((op) => op.key),
      options?.lazySync === true,
    );
  }

  /** {@inheritDoc Kv.grantLease} */
  async grantLease(ttlSeconds: number): Promise<KvLease> {
    assertTtl(ttlSeconds);
    return this.run('lease', () => {
      const id = randomUUID();
      const grantedAt = performance.now();
      this.statements.insertLease.run({ id, ttl: ttlSeconds, expires_at: Date.now() + ttlMs(ttlSeconds) });
      return new SqliteLease(id, ttlSeconds, this.leaseOwner, grantedAt);
    });
  }

  /** {@inheritDoc Kv.ping} */
  async ping(): Promise<void> {
    return this.run('ping', () => {
      this.statements.currentRevision.get();
    });
  }

  /** {@inheritDoc Kv.close} Stops the keep-alive of every lease and closes the file. */
  async close(): Promise<void> {
    clearInterval(this.sweepTimer);
    this.watches.stop();
    for (const lease of this.keptAlive) lease.release();
    this.db.close();
  }

  /** Extends lease `id` by `ttlSeconds` from now; false if it had already expired or was revoked. */
  private async renewLease(id: string, ttlSeconds: number): Promise<boolean> {
    const now = Date.now();
    return this.statements.renewLease.run({ id, now, expires_at: now + ttlMs(ttlSeconds) }).changes === 1;
  }

  /** Deletes lease `id` and the keys attached to it. */
  private async revokeLease(id: string): Promise<void> {
    this.run('lease', () =>
      this.write(() => {
        this.statements.revokeKeys.run({ id });
        this.statements.revokeLease.run({ id });
      }),
    );
  }

  /** What leases need from this KV: renewal, revocation and the set of kept-alive leases. */
  private readonly leaseOwner: LeaseOwner = {
    keptAlive: this.keptAlive,
    renew: (lease) => this.renewLease(lease.id, lease.ttlSeconds),
    revoke: (lease) => this.revokeLease(lease.id),
  };

  /** Runs one operation, maps its errors and reports it to `onOperation`. */
  private run<T>(op: SqliteKvOperation, work: () => T): T {
    const startedAt = performance.now();
    let answered = false;
    try {
      const result = work();
      answered = true;
      return result;
    } catch (error) {
      const mapped = toKvError(error);
      answered = mapped instanceof CommitdError && !(mapped instanceof UnavailableError);
      throw mapped;
    } finally {
      this.onOperation?.(op, performance.now() - startedAt, answered);
    }
  }

  /**
   * Group commit: writes issued in one turn of the event loop (every request handled in
   * one poll phase) run as one SQLite transaction, made durable by one COMMIT (one fsync),
   * at the end of that turn (`setImmediate`; a write alone waits for nothing else). Each
   * write runs in its own SAVEPOINT: one whose condition fails is rolled back and fails
   * alone, the others commit. A COMMIT that fails fails every write of the group.
   */
  private grouped<T>(op: SqliteKvOperation, work: (now: number) => T, keys: readonly string[], lazySync = false): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      if (this.pending.length === 0) setImmediate(this.flushGroup);
      this.pending.push({ op, work, keys, lazySync, resolve: resolve as (value: unknown) => void, reject });
    });
  }

  private readonly flushGroup = (): void => {
    const group = this.pending.splice(0, this.maxGroup);
    if (this.pending.length > 0) setImmediate(this.flushGroup);
    const settled: ({ ok: true; value: unknown } | { ok: false; error: unknown })[] = [];
    const startedAt = performance.now();
    // One durable write makes the whole group durable, so only an all-lazy group skips the fsync.
    const lazy = group.every((write) => write.lazySync);
    try {
      if (lazy) this.statements.syncLazy.run();
      // Watchers compare only when a write of the group falls under a watched prefix.
      const keys = group.flatMap((write) => write.keys);
      this.write((now) => {
        for (const write of group) {
          try {
            settled.push({ ok: true, value: this.inSavepoint(write.work, now) });
          } catch (error) {
            settled.push({ ok: false, error: toKvError(error) });
            // SQLite rolled the whole transaction back (I/O error, disk full): nothing of the group holds.
            if (!this.db.inTransaction) throw error;
          }
        }
      }, keys);
    } catch (error) {
      const mapped = toKvError(error);
      for (let index = 0; index < group.length; index += 1) {
        if (settled[index]?.ok !== false) settled[index] = { ok: false, error: mapped };
      }
    } finally {
      if (lazy) this.restoreFullSync();
    }
    for (const [index, write] of group.entries()) {
      const outcome = settled[index];
      const answered = outcome?.ok === true || (outcome?.error instanceof CommitdError && !(outcome.error instanceof UnavailableError));
      this.onOperation?.(write.op, performance.now() - startedAt, answered);
      if (outcome?.ok) write.resolve(outcome.value);
      else write.reject(outcome?.error);
    }
  };

  /** Back to `synchronous=FULL` after a lazy group; a closed connection has nothing to restore. */
  private restoreFullSync(): void {
    try {
      this.statements.syncFull.run();
    } catch (error) {
      if (this.db.open) throw error;
    }
  }

  /** Runs `work` in a transaction that holds the write lock from its first statement. */
  private write<T>(work: (now: number) => T, keys?: readonly string[]): T {
    const result = this.inTransaction.immediate(work) as T;
    this.watches.changed(keys);
    return result;
  }

  private liveEntry(key: string, now: number): KvEntry | undefined {
    const row = this.statements.get.get({ key, now });
    return row === undefined ? undefined : toEntry(row);
  }

  private nextRevision(): number {
    const row = this.statements.nextRevision.get();
    if (row === undefined) throw new Error('the kv_revision row is missing');
    return row.revision;
  }

  private put(key: string, value: string, expiry: Expiry, revision: number): number {
    this.statements.upsert.run({ key, value, revision, ...expiry });
    return revision;
  }

  /** Whether `op`'s condition holds at `now`. */
  private holds(op: KvOp, now: number): boolean {
    const current = this.liveEntry(op.key, now);
    switch (op.type) {
      case 'create':
        return current === undefined;
      case 'update':
      case 'delete':
        return current?.revision === op.revision;
      case 'check':
        return holdsCheck(op, current);
    }
  }

  private apply(op: KvOp, revision: number, expiry: Expiry | undefined): void {
    if (op.type === 'delete') this.statements.remove.run({ key: op.key });
    if ((op.type === 'create' || op.type === 'update') && expiry !== undefined) this.put(op.key, op.value, expiry, revision);
  }

  /** The lease or TTL a write attaches; a lease that is gone violates the write's condition. */
  private expiryOf(options: WriteOptions | undefined, now: number): Expiry {
    if (options?.lease !== undefined) {
      const { id } = options.lease;
      if (this.statements.liveLease.get({ id, now }) === undefined) {
        throw new ConstraintViolatedError(`lease ${id} expired or was revoked: nothing was applied`);
      }
      return { lease: id, expires_at: null };
    }
    if (options?.ttlSeconds === undefined) return { lease: null, expires_at: null };
    assertTtl(options.ttlSeconds);
    return { lease: null, expires_at: now + ttlMs(options.ttlSeconds) };
  }

  /** Deletes what has expired; reads never depend on it, they filter expired rows. */
  private sweep(): void {
    const now = Date.now();
    try {
      this.db.transaction(() => {
        this.statements.sweepExpired.run({ now });
        this.statements.sweepLeaseKeys.run({ now });
        this.statements.sweepLeases.run({ now });
      })();
    } catch {
      // Busy (another process writes) or closed: the next sweep tries again.
    }
  }
}

function prepare(db: Database.Database): Statements {
  return {
    get: db.prepare(`SELECT key, value, revision FROM kv WHERE key = @key AND ${LIVE}`),
    // The lower bound lets the primary-key index start at the prefix; substr decides.
    list: db.prepare(
      `SELECT key, value, revision FROM kv
       WHERE key >= @prefix AND substr(key, 1, length(@prefix)) = @prefix AND ${LIVE}
       ORDER BY key`,
    ),
    nextRevision: db.prepare('UPDATE kv_revision SET revision = revision + 1 WHERE id = 1 RETURNING revision'),
    currentRevision: db.prepare('SELECT revision FROM kv_revision WHERE id = 1'),
    upsert: db.prepare(
      `INSERT INTO kv (key, value, revision, lease, expires_at) VALUES (@key, @value, @revision, @lease, @expires_at)
       ON CONFLICT (key) DO UPDATE SET value = excluded.value, revision = excluded.revision,
         lease = excluded.lease, expires_at = excluded.expires_at`,
    ),
    remove: db.prepare('DELETE FROM kv WHERE key = @key'),
    liveLease: db.prepare('SELECT id FROM leases WHERE id = @id AND expires_at > @now'),
    insertLease: db.prepare('INSERT INTO leases (id, ttl, expires_at) VALUES (@id, @ttl, @expires_at)'),
    renewLease: db.prepare('UPDATE leases SET expires_at = @expires_at WHERE id = @id AND expires_at > @now'),
    revokeKeys: db.prepare('DELETE FROM kv WHERE lease = @id'),
    revokeLease: db.prepare('DELETE FROM leases WHERE id = @id'),
    sweepExpired: db.prepare('DELETE FROM kv WHERE expires_at IS NOT NULL AND expires_at <= @now'),
    sweepLeaseKeys: db.prepare(
      `DELETE FROM kv WHERE lease IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM leases WHERE leases.id = kv.lease AND leases.expires_at > @now)`,
    ),
    sweepLeases: db.prepare('DELETE FROM leases WHERE expires_at <= @now'),
    syncLazy: db.prepare('PRAGMA synchronous = NORMAL'),
    syncFull: db.prepare('PRAGMA synchronous = FULL'),
  };
}

function holdsCheck(op: Extract<KvOp, { type: 'check' }>, current: KvEntry | undefined): boolean {
  if (!op.exists) {
    if (op.revision !== undefined) throw new TypeError(`check of ${JSON.stringify(op.key)}: a revision needs exists: true`);
    return current === undefined;
  }
  return current !== undefined && (op.revision === undefined || current.revision === op.revision);
}

function toEntry(row: EntryRow): KvEntry {
  return { key: row.key, value: row.value, revision: row.revision };
}

/** SQLite result codes that mean "try again later", not "your request is wrong". */
const TRANSIENT_CODES = ['SQLITE_BUSY', 'SQLITE_LOCKED', 'SQLITE_IOERR', 'SQLITE_FULL', 'SQLITE_CANTOPEN'];

/**
 * Maps SQLite failures to the KV contract: a busy or locked database, an I/O error, a
 * full disk and a closed connection become `UnavailableError`; anything else is a bug
 * and passes through unchanged.
 */
function toKvError(error: unknown): unknown {
  if (error instanceof CommitdError || !(error instanceof Error)) return error;
  if (error instanceof Database.SqliteError && TRANSIENT_CODES.some((code) => error.code.startsWith(code))) {
    return new UnavailableError(`sqlite unavailable: ${error.message}`, { cause: error });
  }
  if (error instanceof TypeError && error.message.includes('database connection is not open')) {
    return new UnavailableError('sqlite kv is closed', { cause: error });
  }
  return error;
}

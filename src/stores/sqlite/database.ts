/**
 * The database behind a `sqlite` store: its two connections, the marker table, and the
 * write lock with group commit.
 *
 * Single writer, group commit. SQLite allows one writer per database file, so sessions on
 * a store take the file's in-process write lock in turn (FIFO), from `prepare` until the
 * session is decided — its commit point written (`decide`) — or rolled back. Each session
 * runs inside a savepoint of the writer's one open transaction, so a rejected change rolls
 * back only its own session. A decided session's writes stay in that transaction and the
 * next session goes on on top of them. Its `commit` asks for durability: at once if no
 * session holds the lock, else at the holder's hand-over when nobody else queues, or once
 * the group has {@link MAX_GROUP} sessions or its first request waited
 * {@link MAX_GROUP_DELAY_MS}. One `COMMIT` (one fsync) then makes the whole group durable.
 * A session joins only after the one before it is decided, so nothing it read can be
 * rolled back under it, except by a crash or a failed COMMIT, which loses the whole group:
 * every member is past its commit point and is rolled forward from its own record.
 *
 * Nothing is locked while clients send changes: a slow or frozen worker stalls no one. A
 * session holding the lock across a slow commit point delays those queued behind it, and
 * the durability of the decided sessions before it.
 * @module
 */
import { mkdirSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Mutex } from 'async-mutex';
import Database from 'better-sqlite3';
import { StoreUnavailableError } from '../errors.ts';
import { statementTimeoutMs } from '../limits.ts';
import { ConnectionGuard } from './guard.ts';
import { sqliteCode, StatementCache } from './statements.ts';

/** Options of a `sqlite` store. */
export interface SqliteOptions {
  /** The database file; its directory is created if missing. Relative to the working directory. */
  readonly path: string;
  /** How long `prepare` waits for another process's write lock before failing (default 5000). */
  readonly busyTimeoutMs?: number;
  /** How long one statement of a change may run (seconds, or "5s"; default 5 s). */
  readonly statementTimeout?: number | string;
}

/** The savepoint of the session that holds the write lock (one at a time). */
const SAVEPOINT = 'commitd_session';
/** At most this many decided sessions share one COMMIT. */
export const MAX_GROUP = 64;
/** A group commits at the next hand-over once its first request for durability waited this long. */
export const MAX_GROUP_DELAY_MS = 5;

/** Page cache per connection, as SQLite's negative cache_size: KiB (2 MiB). */
const PAGE_CACHE_KIB = -2000;

const DEFAULT_BUSY_TIMEOUT_MS = 5000;
const MAX_BACKOFF_MS = 50;

/** A decided session waiting in the group for the COMMIT that makes it durable. */
export interface GroupMember {
  readonly outcome: Promise<void>;
  readonly durable: () => void;
  readonly failed: (err: unknown) => void;
  /** Its session's `commit` waits for it. */
  requested: boolean;
}

interface MarkerStatements {
  /** On the reader: committed markers only. */
  readonly find: Database.Statement<[string], { session_id: string }>;
  readonly insert: Database.Statement<[string, string, string]>;
  /** On the writer, inside the transaction that holds the write lock. */
  readonly findInTransaction: Database.Statement<[string], { session_id: string }>;
}

/** The long-lived part of a store: its connections and its writer queue. */
export class SqliteDatabase {
  /** Runs every write, and compiles changes; only the holder of `#writeLock` executes on it. */
  readonly writer: Database.Database;
  /**
   * Reads markers. A second connection because the writer may be inside another session's
   * open transaction, where it would see that session's uncommitted marker.
   */
  readonly reader: Database.Database;
  /** Changes compiled on the writer. */
  readonly statements: StatementCache;
  /** Refuses worker statements that reach the bookkeeping, and aborts them at the limit. */
  readonly guard: ConnectionGuard;
  /** async-mutex serves waiters in arrival order, so no session starves. */
  readonly #writeLock = new Mutex();
  /** Sessions queued for `#writeLock`: the group commits at a hand-over when none are. */
  #queued = 0;
  readonly path: string;
  readonly #busyTimeoutMs: number;
  #markers: MarkerStatements | undefined;
  /** Decided sessions whose writes are in the writer's open transaction, not yet durable. */
  #group: GroupMember[] = [];
  /** When the first member of the group asked for durability (`performance.now()`), if one did. */
  #requestedSince: number | undefined;

  private constructor(path: string, busyTimeoutMs: number, limitMs: number) {
    this.path = path;
    this.#busyTimeoutMs = busyTimeoutMs;
    // timeout 0: better-sqlite3's busy handler sleeps synchronously and would block the event loop.
    this.writer = new Database(path, { timeout: 0 });
    this.reader = new Database(path, { timeout: 0 });
    try {
      this.guard = ConnectionGuard.install(this.writer, limitMs);
    } catch (err) {
      this.writer.close();
      this.reader.close();
      throw err;
    }
    this.statements = new StatementCache(this.writer, this.guard);
  }

  static async open(options: SqliteOptions): Promise<SqliteDatabase> {
    if (options.path === ':memory:' || options.path === '') {
      throw new Error('sqlite store needs a file path: an in-memory database cannot be shared by its two connections');
    }
    const path = resolve(options.path);
    mkdirSync(dirname(path), { recursive: true });
    const db = new SqliteDatabase(path, options.busyTimeoutMs ?? DEFAULT_BUSY_TIMEOUT_MS, statementTimeoutMs(options.statementTimeout));
    try {
      await db.whenNotBusy(() => db.writer.pragma('journal_mode = WAL'));
      db.writer.pragma('synchronous = FULL');
      // better-sqlite3 defaults to a 16 MiB page cache per connection; commitd opens several.
      db.writer.pragma(`cache_size = ${PAGE_CACHE_KIB}`);
      await db.whenNotBusy(() =>
        db.writer.exec('CREATE TABLE IF NOT EXISTS main.commitd_sessions (key TEXT PRIMARY KEY, session_id TEXT NOT NULL, committed_at TEXT NOT NULL)'),
      );
      db.reader.pragma('query_only = ON');
      db.reader.pragma(`cache_size = ${PAGE_CACHE_KIB}`);
      db.#markers = {
        find: db.reader.prepare('SELECT session_id FROM main.commitd_sessions WHERE key = ?'),
        insert: db.writer.prepare('INSERT INTO main.commitd_sessions (key, session_id, committed_at) VALUES (?, ?, ?)'),
        findInTransaction: db.writer.prepare('SELECT session_id FROM main.commitd_sessions WHERE key = ?'),
      };
    } catch (err) {
      db.close();
      throw err;
    }
    return db;
  }

  /** Statements on the marker table, compiled once the table exists. */
  get markers(): MarkerStatements {
    if (!this.#markers) throw new Error(`sqlite database ${this.path} is not open`);
    return this.#markers;
  }

  /**
   * Runs `step`, retrying asynchronously with a short exponential backoff while another
   * process holds the lock (SQLITE_BUSY), for at most `busyTimeoutMs`.
   */
  async whenNotBusy<T>(step: () => T): Promise<T> {
    const started = Date.now();
    for (let backoff = 1; ; backoff = Math.min(backoff * 2, MAX_BACKOFF_MS)) {
      try {
        return step();
      } catch (err) {
        if (!sqliteCode(err)?.startsWith('SQLITE_BUSY')) throw err;
        const waited = Date.now() - started;
        if (waited >= this.#busyTimeoutMs)
          throw new StoreUnavailableError(
            `sqlite database ${this.path} stayed locked by another process for ${waited} ms`,
            { waitedMs: waited },
            { cause: err },
          );
        await sleep(Math.min(backoff, this.#busyTimeoutMs - waited));
      }
    }
  }

  /**
   * Takes the write lock (queueing behind other sessions), then begins the transaction or
   * joins the open one, and opens the session's savepoint.
   */
  async enter(): Promise<void> {
    this.#queued += 1;
    try {
      await this.#writeLock.acquire();
    } finally {
      this.#queued -= 1;
    }
    try {
      this.#failLostGroup();
      if (!this.writer.inTransaction) await this.whenNotBusy(() => this.writer.exec('BEGIN IMMEDIATE'));
      this.writer.exec(`SAVEPOINT ${SAVEPOINT}`);
    } catch (err) {
      await this.#handOver();
      throw err;
    }
  }

  /**
   * The holder's session will commit: its writes join the group and the lock goes to the
   * next session. Nothing is durable yet: see {@link durable}.
   */
  async decide(): Promise<GroupMember> {
    try {
      this.writer.exec(`RELEASE ${SAVEPOINT}`);
    } catch (err) {
      await this.leave();
      throw err;
    }
    let settle!: Pick<GroupMember, 'durable' | 'failed'>;
    const outcome = new Promise<void>((resolve, reject) => {
      settle = { durable: resolve, failed: reject };
    });
    // Awaited by `durable`, maybe after a failed COMMIT has already rejected it.
    outcome.catch(() => undefined);
    const member: GroupMember = { outcome, ...settle, requested: false };
    this.#group.push(member);
    await this.#handOver();
    return member;
  }

  /**
   * Settles once `member`'s group is committed: commits it now if no session holds the
   * lock, else asks the holder to at its hand-over.
   */
  async durable(member: GroupMember): Promise<void> {
    if (!member.requested) {
      member.requested = true;
      this.#requestedSince ??= performance.now();
    }
    // Taken only if free: an unlocked Mutex is taken at once by `acquire`, before it resolves.
    if (this.#group.includes(member) && !this.#writeLock.isLocked()) {
      await this.#writeLock.acquire();
      await this.#handOver(true);
    }
    return member.outcome;
  }

  /**
   * The holder's session is rolled back: its savepoint is undone, the group's writes stay.
   * With `flush`, the group commits before the lock is handed over (a session that found
   * a marker of the group must not report it before it is durable).
   */
  async leave(flush = false): Promise<void> {
    try {
      if (this.writer.open && this.writer.inTransaction) {
        this.writer.exec(`ROLLBACK TO ${SAVEPOINT}`);
        this.writer.exec(`RELEASE ${SAVEPOINT}`);
        if (this.#group.length === 0) this.writer.exec('ROLLBACK');
      }
    } finally {
      await this.#handOver(flush);
    }
  }

  /** True if the marker for `key` is committed (visible to the reader). */
  markerCommitted(key: string): boolean {
    return this.markers.find.get(key) !== undefined;
  }

  /**
   * Commits the group if it is due — nobody else waits for the lock, it is full, or its
   * first request for durability waited long enough — then hands the lock to the next
   * session.
   */
  async #handOver(flush = false): Promise<void> {
    let failed: unknown;
    try {
      failed = this.#failLostGroup();
      const since = this.#requestedSince;
      const due = flush || (since !== undefined && (this.#queued === 0 || this.#group.length >= MAX_GROUP || performance.now() - since >= MAX_GROUP_DELAY_MS));
      if (this.#group.length > 0 && due) failed = await this.#commitGroup();
    } finally {
      // Hands the lock straight to the next waiter, still held, so no newcomer can jump the queue.
      this.#writeLock.release();
    }
    // The group's sessions learn it from their `durable`; a forced flush tells its caller too.
    if (flush && failed !== undefined) throw failed;
  }

  /**
   * SQLite rolls a whole transaction back on some errors (disk full, I/O): then the group's
   * writes are gone and its sessions must not be told otherwise, nor join a new transaction.
   * @returns the error its sessions got, if the group was lost
   */
  #failLostGroup(): unknown {
    if (this.#group.length === 0 || this.writer.inTransaction) return undefined;
    const lost = this.#group;
    this.#group = [];
    this.#requestedSince = undefined;
    const err = new Error(`sqlite database ${this.path}: the transaction holding ${lost.length} decided session(s) was rolled back`);
    for (const member of lost) member.failed(err);
    return err;
  }

  /** One COMMIT for every decided session; each learns the outcome. Returns the error, if any. */
  async #commitGroup(): Promise<unknown> {
    const group = this.#group;
    this.#group = [];
    this.#requestedSince = undefined;
    try {
      await this.whenNotBusy(() => this.writer.exec('COMMIT'));
    } catch (err) {
      try {
        if (this.writer.open && this.writer.inTransaction) this.writer.exec('ROLLBACK');
      } catch {
        // The connection is gone: the transaction went with it.
      }
      for (const member of group) member.failed(err);
      return err;
    }
    for (const member of group) member.durable();
    return undefined;
  }

  close(): void {
    // Closing the writer rolls back a transaction still open: sessions in flight are abandoned.
    const abandoned = this.#group;
    this.#group = [];
    this.#requestedSince = undefined;
    for (const member of abandoned) member.failed(new Error(`sqlite database ${this.path} closed before its commit was durable`));
    this.writer.close();
    this.reader.close();
  }
}

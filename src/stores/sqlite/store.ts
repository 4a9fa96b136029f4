/**
 * The `sqlite` store type: changes are SQL statements, buffered until `prepare`, then run
 * in one transaction together with the session's marker row.
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
import { Type } from '@sinclair/typebox';
import Database from 'better-sqlite3';
import { Mutex } from 'async-mutex';
import { LRUCache } from 'lru-cache';
import { errorMessage } from '../../errors/core.ts';
import { describeKey, fromHex, toHex } from '../../core/keys.ts';
import { ChangeRejectedError, HelperCommittable, MarkerExistsError, StoreUnavailableError, type StoreDriver } from '../helper.ts';
import type { Store, StoreContext, StoreType } from '../api.ts';

/** The savepoint of the session that holds the write lock (one at a time). */
const SAVEPOINT = 'commitd_session';
/** At most this many decided sessions share one COMMIT. */
export const MAX_GROUP = 64;
/** A group commits at the next hand-over once its first request for durability waited this long. */
export const MAX_GROUP_DELAY_MS = 5;

/** Page cache per connection, as SQLite's negative cache_size: KiB (2 MiB). */
const PAGE_CACHE_KIB = -2000;
/**
 * Compiled statements kept per database, by SQL text. A statement compiled per change would
 * live until V8 finalises its wrapper, and V8 does not see its native size: RSS crept.
 */
const STATEMENT_CACHE_SIZE = 256;

/** Options of a `sqlite` store. */
export interface SqliteOptions {
  /** The database file; its directory is created if missing. Relative to the working directory. */
  readonly path: string;
  /** How long `prepare` waits for another process's write lock before failing (default 5000). */
  readonly busyTimeoutMs?: number;
}

/** One change: a single SQL statement with positional (array) or named (object) parameters. */
export interface SqliteChange {
  readonly sql: string;
  readonly params?: unknown[] | Record<string, unknown>;
}

const DEFAULT_BUSY_TIMEOUT_MS = 5000;
const MAX_BACKOFF_MS = 50;

/**
 * Statements a change may start with: those that read or write data, and DDL (transactional
 * in SQLite). Everything else — BEGIN, COMMIT, END, ROLLBACK, SAVEPOINT, RELEASE, ATTACH,
 * DETACH, VACUUM, PRAGMA, … — would break the one transaction commitd runs, or escape it.
 */
const ALLOWED_VERBS = new Set(['SELECT', 'VALUES', 'WITH', 'INSERT', 'REPLACE', 'UPDATE', 'DELETE', 'CREATE', 'DROP', 'ALTER']);

const SqlValue = Type.Union([Type.String(), Type.Number(), Type.Boolean(), Type.Null()]);

const optionsSchema = Type.Object(
  {
    path: Type.String({ minLength: 1 }),
    busyTimeoutMs: Type.Optional(Type.Integer({ minimum: 0 })),
  },
  { additionalProperties: false },
);

const changeSchema = Type.Object(
  {
    sql: Type.String({ minLength: 1 }),
    params: Type.Optional(Type.Union([Type.Array(SqlValue), Type.Record(Type.String(), SqlValue)])),
  },
  { additionalProperties: false },
);

/** A SQLite error code (`SQLITE_BUSY`, `SQLITE_CONSTRAINT_PRIMARYKEY`, …), if `err` has one. */
function sqliteCode(err: unknown): string | undefined {
  return err instanceof Database.SqliteError ? err.code : undefined;
}

/** The first keyword of a statement, past whitespace and comments. */
function leadingVerb(sql: string): string {
  const rest = sql.replace(/^(?:\s+|--[^\n]*(?:\n|$)|\/\*[\s\S]*?(?:\*\/|$))*/, '');
  return /^[A-Za-z]+/.exec(rest)?.[0].toUpperCase() ?? '';
}

/**
 * A JSON scalar as SQLite binds it. Booleans become 1/0 (SQLite has no boolean type; its own
 * TRUE/FALSE are 1/0). Integral numbers bind as INTEGER, not REAL: JSON does not tell 5 from
 * 5.0, SQL does, and a REAL 5.0 in an untyped column would surprise.
 */
function bindable(value: unknown, where: string): string | number | bigint | null {
  if (typeof value === 'boolean') return value ? 1n : 0n;
  if (typeof value === 'number') return Number.isSafeInteger(value) ? BigInt(value) : value;
  if (typeof value === 'string' || value === null) return value;
  throw new ChangeRejectedError(`parameter ${where} must be a string, number, boolean or null`, { reason: 'params' });
}

function bindableParams(params: SqliteChange['params']): unknown[] {
  if (params === undefined) return [];
  if (Array.isArray(params)) return params.map((value, i) => bindable(value, `[${i}]`));
  const named: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(params)) named[name] = bindable(value, JSON.stringify(name));
  return [named];
}

/** A decided session waiting in the group for the COMMIT that makes it durable. */
interface GroupMember {
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
class SqliteDatabase {
  /** Runs every write, and compiles changes; only the holder of `#writeLock` executes on it. */
  readonly writer: Database.Database;
  /**
   * Reads markers. A second connection because the writer may be inside another session's
   * open transaction, where it would see that session's uncommitted marker.
   */
  readonly reader: Database.Database;
  /** async-mutex serves waiters in arrival order, so no session starves. */
  readonly #writeLock = new Mutex();
  /** Sessions queued for `#writeLock`: the group commits at a hand-over when none are. */
  #queued = 0;
  readonly path: string;
  readonly #busyTimeoutMs: number;
  #markers: MarkerStatements | undefined;
  /** Compiled on the writer, never bound: parameters are passed to each `run`. */
  readonly #statements = new LRUCache<string, Database.Statement>({ max: STATEMENT_CACHE_SIZE });
  /** Decided sessions whose writes are in the writer's open transaction, not yet durable. */
  #group: GroupMember[] = [];
  /** When the first member of the group asked for durability (`performance.now()`), if one did. */
  #requestedSince: number | undefined;
  /** Whether a parameter shape fits a statement, by SQL text and shape: an error message, or '' if it fits. */
  readonly #shapes = new LRUCache<string, string>({ max: STATEMENT_CACHE_SIZE * 4 });

  private constructor(path: string, busyTimeoutMs: number) {
    this.path = path;
    this.#busyTimeoutMs = busyTimeoutMs;
    // timeout 0: better-sqlite3's busy handler sleeps synchronously and would block the event loop.
    this.writer = new Database(path, { timeout: 0 });
    this.reader = new Database(path, { timeout: 0 });
  }

  static async open(options: SqliteOptions): Promise<SqliteDatabase> {
    if (options.path === ':memory:' || options.path === '') {
      throw new Error('sqlite store needs a file path: an in-memory database cannot be shared by its two connections');
    }
    const path = resolve(options.path);
    mkdirSync(dirname(path), { recursive: true });
    const db = new SqliteDatabase(path, options.busyTimeoutMs ?? DEFAULT_BUSY_TIMEOUT_MS);
    try {
      await db.whenNotBusy(() => db.writer.pragma('journal_mode = WAL'));
      db.writer.pragma('synchronous = FULL');
      // better-sqlite3 defaults to a 16 MiB page cache per connection; commitd opens several.
      db.writer.pragma(`cache_size = ${PAGE_CACHE_KIB}`);
      await db.whenNotBusy(() =>
        db.writer.exec(
          'CREATE TABLE IF NOT EXISTS commitd_sessions (key TEXT PRIMARY KEY, session_id TEXT NOT NULL, committed_at TEXT NOT NULL)',
        ),
      );
      db.reader.pragma('query_only = ON');
      db.reader.pragma(`cache_size = ${PAGE_CACHE_KIB}`);
      db.#markers = {
        find: db.reader.prepare('SELECT session_id FROM commitd_sessions WHERE key = ?'),
        insert: db.writer.prepare('INSERT INTO commitd_sessions (key, session_id, committed_at) VALUES (?, ?, ?)'),
        findInTransaction: db.writer.prepare('SELECT session_id FROM commitd_sessions WHERE key = ?'),
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
   * The compiled statement for `sql`, from the cache. Compiling on the shared writer is safe
   * while a session holds its transaction: it executes nothing.
   */
  statement(sql: string): Database.Statement {
    let statement = this.#statements.get(sql);
    if (!statement) {
      statement = this.writer.prepare(sql);
      this.#statements.set(sql, statement);
    }
    return statement;
  }

  /**
   * Checks that parameters of this shape (how many positional ones, which named ones) bind
   * to `sql`, without executing it: binds a throwaway compilation once per shape and caches
   * the verdict, so a mismatch fails at apply rather than at commit.
   * @returns an error message, or undefined if they fit
   */
  paramsMismatch(sql: string, params: readonly unknown[]): string | undefined {
    const named = params[0] !== null && typeof params[0] === 'object';
    const shape = `${sql}\0${named ? Object.keys(params[0] as object).sort().join('\0') + '\0named' : params.length}`;
    let verdict = this.#shapes.get(shape);
    if (verdict === undefined) {
      try {
        this.writer.prepare(sql).bind(...params);
        verdict = '';
      } catch (err) {
        verdict = errorMessage(err);
      }
      this.#shapes.set(shape, verdict);
    }
    return verdict || undefined;
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
        if (waited >= this.#busyTimeoutMs) throw new StoreUnavailableError(`sqlite database ${this.path} stayed locked by another process for ${waited} ms`, { waitedMs: waited }, { cause: err });
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
      const due =
        flush ||
        (since !== undefined &&
          (this.#queued === 0 || this.#group.length >= MAX_GROUP || performance.now() - since >= MAX_GROUP_DELAY_MS));
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

/** One session's driver: compiles changes as they arrive, runs them all at prepare. */
class SqliteDriver implements StoreDriver<SqliteChange> {
  readonly #db: SqliteDatabase;
  #statements: { readonly statement: Database.Statement; readonly params: unknown[] }[] = [];
  /**
   * `holding`: prepared, holds the write lock and its savepoint. `decided`: its writes wait
   * in the group (`#member`) for the COMMIT that makes them durable.
   */
  #state: 'idle' | 'holding' | 'decided' = 'idle';
  #member: GroupMember | undefined;

  constructor(db: SqliteDatabase) {
    this.#db = db;
  }

  async findMarker(key: Uint8Array): Promise<Uint8Array | undefined> {
    const row = await this.#db.whenNotBusy(() => this.#db.markers.find.get(describeKey(key)));
    return row && fromHex(row.session_id);
  }

  async open(): Promise<void> {
    this.#statements = [];
  }

  /**
   * Compiles the statement (or finds it compiled) and checks its parameters now, so a bad
   * statement fails at apply, not at commit.
   */
  async apply(change: SqliteChange): Promise<void> {
    const verb = leadingVerb(change.sql);
    let statement: Database.Statement;
    try {
      statement = this.#db.statement(change.sql);
    } catch (err) {
      throw new ChangeRejectedError(`statement does not compile: ${errorMessage(err)}`, {
        ...(sqliteCode(err) ? { code: sqliteCode(err) } : { reason: 'statement' }),
        message: errorMessage(err),
      });
    }
    if (!ALLOWED_VERBS.has(verb)) {
      throw new ChangeRejectedError(
        `${verb || 'this'} statements are not allowed: a change must read or write data (commitd runs the transaction)`,
        { reason: 'statement', verb },
      );
    }
    const params = bindableParams(change.params);
    const mismatch = this.#db.paramsMismatch(change.sql, params);
    if (mismatch !== undefined) {
      throw new ChangeRejectedError(`parameters do not fit the statement: ${mismatch}`, { reason: 'params', message: mismatch });
    }
    this.#statements.push({ statement, params });
  }

  /**
   * Takes the write lock (queueing behind other sessions), opens the session's savepoint,
   * inserts the marker first — so a second committer of the same key stops at the marker,
   * before its changes can fail on the first one's rows — then runs the changes. Keeps the
   * lock until the session is decided or rolled back.
   */
  async prepare(key: Uint8Array, id: Uint8Array): Promise<void> {
    await this.#db.enter();
    this.#state = 'holding';
    try {
      this.#insertMarker(key, id);
      this.#statements.forEach((change, index) => this.#run(change, index));
    } catch (err) {
      this.#state = 'idle';
      this.#statements = [];
      // A marker another session of the group wrote is reported only once it is durable.
      const pending = err instanceof MarkerExistsError && !this.#db.markerCommitted(describeKey(key));
      await this.#db.leave(pending);
      throw err;
    }
  }

  /** The session will commit: its writes join the group and the next session may go on. */
  async decide(): Promise<void> {
    if (this.#state !== 'holding') return;
    this.#state = 'decided';
    this.#statements = [];
    this.#member = await this.#db.decide();
  }

  /** Returns once the session's group is committed (fsynced). */
  async commit(key: Uint8Array, id: Uint8Array): Promise<void> {
    if (this.#state === 'idle') await this.prepare(key, id);
    if (this.#state === 'holding') await this.decide();
    const member = this.#member as GroupMember;
    this.#state = 'idle';
    this.#member = undefined;
    await this.#db.durable(member);
  }

  /**
   * Undoes the session's savepoint and lets the next queued session in. A decided session
   * is past its commit point: its writes stay in the group. Safe to call twice.
   */
  async rollback(): Promise<void> {
    this.#statements = [];
    const { state, member } = { state: this.#state, member: this.#member };
    this.#state = 'idle';
    this.#member = undefined;
    if (state === 'holding') await this.#db.leave();
    // Past its commit point the session's writes stay: see that they get committed.
    if (member) void this.#db.durable(member).catch(() => undefined);
  }

  #insertMarker(key: Uint8Array, id: Uint8Array): void {
    const text = describeKey(key);
    try {
      this.#db.markers.insert.run(text, toHex(id), new Date().toISOString());
    } catch (err) {
      if (sqliteCode(err) !== 'SQLITE_CONSTRAINT_PRIMARYKEY') throw err;
      const row = this.#db.markers.findInTransaction.get(text);
      if (!row) throw err;
      throw new MarkerExistsError(key, fromHex(row.session_id));
    }
  }

  #run({ statement, params }: { readonly statement: Database.Statement; readonly params: unknown[] }, index: number): void {
    try {
      statement.run(...params);
    } catch (err) {
      throw new ChangeRejectedError(`change ${index + 1} failed: ${errorMessage(err)}`, {
        ...(sqliteCode(err) ? { code: sqliteCode(err) } : {}),
        message: errorMessage(err),
        change: index,
      }, { cause: err });
    }
  }

}

/**
 * The built-in `sqlite` store type. Changes are checked when they arrive and run at
 * `prepare`; sessions on one store take the file's single write lock in turn (FIFO), from
 * prepare until decided, and decided sessions commit in groups (see the module comment).
 */
export const sqliteStoreType: StoreType<SqliteOptions, SqliteChange> = {
  type: 'sqlite',
  optionsSchema,
  changeSchema,
  async create(options: SqliteOptions, ctx: StoreContext): Promise<Store<SqliteChange>> {
    const db = await SqliteDatabase.open(options);
    return {
      name: ctx.name,
      type: 'sqlite',
      session: () => new HelperCommittable(ctx.name, new SqliteDriver(db)),
      close: async () => db.close(),
    };
  },
};

/**
 * The `redis` store type. Changes are write commands (`{command: [name, ...args]}`) from an
 * allowlist, buffered until commit. Commit runs them in one `MULTI`/`EXEC` together with
 * the marker `SET commitd:session:<key> <id> EX <retention>`, under `WATCH` of the marker:
 * a second committer of the same key finds the marker (or its EXEC is voided by the WATCH),
 * so even a non-idempotent command such as INCR takes effect once across crashes and retries.
 *
 * Limits, honestly:
 * - Redis cannot roll back a transaction. A command that fails at EXEC time (WRONGTYPE, say)
 *   fails alone: the other commands *and the marker* are applied. Commit reports it with a
 *   `ChangeRejectedError`, but a later recovery finds the marker and skips. Prepare catches
 *   what Redis can check without running anything (unknown commands, wrong arity).
 * - Markers expire after the retention period; a recovery of an older session re-applies.
 * - One Redis server (or primary): the marker and the data must be in one MULTI, which Redis
 *   Cluster allows only within one hash slot.
 * @module
 */
import { Type } from '@sinclair/typebox';
import { Redis, type ChainableCommander } from 'ioredis';
import type { Logger } from 'pino';
import { CommitdError, errorMessage } from '../../errors/core.ts';
import { describeKey, fromHex, toHex } from '../../core/keys.ts';
import { withTimeout } from '../../kv/deadline.ts';
import { BookkeepingError } from '../errors.ts';
import { StatementTimeoutOption, statementTimeoutMs } from '../limits.ts';
import { ChangeRejectedError, HelperCommittable, MarkerExistsError, StoreUnavailableError, type StoreDriver } from '../helper.ts';
import type { Store, StoreContext, StoreType } from '../api.ts';

/** Options of a `redis` store. */
export interface RedisOptions {
  /** `redis://[user:password@]host:port[/db]`. */
  readonly url: string;
  /** Bound of every Redis command (ioredis `commandTimeout`): seconds, or "5s", "500ms"; default 5 s. */
  readonly statementTimeout?: number | string;
}

/** One change: a write command and its arguments. */
export interface RedisChange {
  readonly command: readonly (string | number)[];
}

/**
 * The commands a change may run, upper case: writes whose effect does not depend on reading
 * their reply (commitd discards replies). Reads, admin, scripting and transaction commands
 * (GET, KEYS, FLUSHALL, CONFIG, EVAL, MULTI, WATCH, …) are refused.
 */
export const REDIS_WRITE_COMMANDS: ReadonlySet<string> = new Set([
  'SET',
  'SETEX',
  'PSETEX',
  'SETNX',
  'MSET',
  'MSETNX',
  'APPEND',
  'SETRANGE',
  'SETBIT',
  'INCR',
  'INCRBY',
  'INCRBYFLOAT',
  'DECR',
  'DECRBY',
  'DEL',
  'UNLINK',
  'EXPIRE',
  'PEXPIRE',
  'EXPIREAT',
  'PEXPIREAT',
  'PERSIST',
  'HSET',
  'HSETNX',
  'HMSET',
  'HDEL',
  'HINCRBY',
  'HINCRBYFLOAT',
  'LPUSH',
  'RPUSH',
  'LPUSHX',
  'RPUSHX',
  'LREM',
  'LSET',
  'LTRIM',
  'LINSERT',
  'SADD',
  'SREM',
  'ZADD',
  'ZREM',
  'ZINCRBY',
  'ZREMRANGEBYSCORE',
  'ZREMRANGEBYRANK',
  'ZREMRANGEBYLEX',
  'XADD',
  'XDEL',
  'XTRIM',
  'PFADD',
  'GEOADD',
]);

/** Prefix of every marker key; the idempotency key's bytes follow as they are. */
export const REDIS_MARKER_PREFIX = 'commitd:session:';

/** Bound of connecting; every command is bounded by the store's `statementTimeout`. */
const CONNECT_TIMEOUT_MS = 5_000;
/** EXECs voided by a WATCH before giving up; each void means someone touched the marker key. */
const MAX_WATCH_ATTEMPTS = 5;
/** Dedicated connections kept open between commits. */
const MAX_IDLE_CONNECTIONS = 4;

const optionsSchema = Type.Object(
  { url: Type.String({ minLength: 1 }), statementTimeout: Type.Optional(StatementTimeoutOption) },
  { additionalProperties: false },
);

/** What the `redis` type keeps for itself (DESIGN "The boundary", point 1). */
const REDIS_BOOKKEEPING = `marker keys ${REDIS_MARKER_PREFIX}*`;

const changeSchema = Type.Object(
  {
    command: Type.Array(Type.Union([Type.String(), Type.Number()]), { minItems: 1 }),
  },
  { additionalProperties: false },
);

/** A change names a command outside the allowlist (or names none): a bad request, not a conflict. */
export class InvalidRedisCommandError extends CommitdError {
  constructor(storeName: string, name: unknown) {
    super(
      'INVALID_REQUEST',
      typeof name === 'string'
        ? `redis store ${storeName} does not run ${JSON.stringify(name)}: a change must be a write command (${[...REDIS_WRITE_COMMANDS].join(', ')})`
        : `redis store ${storeName}: a change's command must start with the command's name`,
    );
  }
}

/** One failed command of a MULTI, for `ChangeRejectedError.detail`. */
interface CommandFailure {
  readonly index: number;
  readonly command: string;
  readonly message: string;
}

type Reply = [error: Error | null, result: unknown];

function markerKey(key: Uint8Array): Buffer {
  return Buffer.concat([Buffer.from(REDIS_MARKER_PREFIX), key]);
}

/** ioredis names the errors Redis answered (as opposed to connection failures) `ReplyError`. */
function isReplyError(err: unknown): err is Error {
  return err instanceof Error && err.name === 'ReplyError';
}

function failuresOf(replies: readonly Reply[], commands: readonly (readonly (string | number)[])[], offset: number): CommandFailure[] {
  return commands.flatMap((command, index) => {
    const error = replies[index + offset]?.[0];
    return error ? [{ index, command: String(command[0]).toUpperCase(), message: error.message }] : [];
  });
}

/**
 * A store's connections. Marker reads share one auto-reconnecting connection. Commits each
 * take a dedicated connection, because WATCH belongs to a connection: two commits sharing
 * one would watch each other's keys. They come from a small pool of `duplicate()`s rather
 * than a `duplicate()` per commit, which would add a connect and handshake to every commit.
 * Dedicated connections never reconnect, queue offline or resend: a WATCH silently lost to a
 * reconnect would let a second EXEC through.
 */
class RedisConnections {
  readonly name: string;
  readonly shared: Redis;
  readonly commandTimeoutMs: number;
  readonly #idle: Redis[] = [];
  #closed = false;

  constructor(url: string, name: string, logger: Logger, commandTimeoutMs: number) {
    this.name = name;
    this.commandTimeoutMs = commandTimeoutMs;
    this.shared = new Redis(url, {
      connectTimeout: CONNECT_TIMEOUT_MS,
      commandTimeout: commandTimeoutMs,
      maxRetriesPerRequest: 1,
      retryStrategy: (attempt) => Math.min(100 * 2 ** attempt, 2_000),
      connectionName: `commitd/${name}`,
    });
    // Without a listener an 'error' event kills the process; ioredis reconnects on its own.
    let failing = false;
    this.shared.on('error', (err: Error) => {
      if (!failing) logger.warn({ err }, 'redis connection failed; reconnecting');
      failing = true;
    });
    this.shared.on('ready', () => {
      if (failing) logger.info('redis connection restored');
      failing = false;
    });
  }

  /** A ready connection that only this caller uses until `release`. */
  async acquire(): Promise<Redis> {
    for (let conn = this.#idle.pop(); conn; conn = this.#idle.pop()) {
      if (conn.status === 'ready') return conn;
      conn.disconnect();
    }
    const conn = this.shared.duplicate({
      lazyConnect: true,
      enableOfflineQueue: false,
      autoResendUnfulfilledCommands: false,
      maxRetriesPerRequest: 0,
      retryStrategy: () => null,
    });
    // Failures reject the pending command; the listener only keeps the event from killing the process.
    conn.on('error', () => undefined);
    try {
      // Connecting and the handshake together: ioredis bounds each step, not the whole.
      const timeoutMs = CONNECT_TIMEOUT_MS + this.commandTimeoutMs;
      await withTimeout(conn.connect(), timeoutMs, () => new StoreUnavailableError(`redis did not accept a connection within ${timeoutMs} ms`));
      return conn;
    } catch (err) {
      conn.disconnect();
      throw this.unavailable(err, 'connect');
    }
  }

  /** Back to the pool when `clean` (no WATCH or MULTI pending), else closed. */
  release(conn: Redis, clean: boolean): void {
    if (clean && !this.#closed && conn.status === 'ready' && this.#idle.length < MAX_IDLE_CONNECTIONS) this.#idle.push(conn);
    else conn.disconnect();
  }

  /** The ID stored in `key`'s marker, if any. */
  async readMarker(key: Uint8Array): Promise<Uint8Array | undefined> {
    try {
      const stored = await this.shared.getBuffer(markerKey(key));
      return stored ? fromHex(stored.toString('utf8')) : undefined;
    } catch (err) {
      throw this.unavailable(err, 'marker read');
    }
  }

  /**
   * The keys `command` reaches, as Redis itself finds them (`COMMAND GETKEYS`). When Redis
   * cannot say (wrong arity, say: prepare refuses such a command anyway), every argument
   * counts as a key, so a marker key cannot slip through an error.
   */
  async keysOf(command: readonly (string | number)[]): Promise<string[]> {
    try {
      const keys = (await this.shared.call('COMMAND', 'GETKEYS', ...command)) as unknown[];
      return keys.map(String);
    } catch (err) {
      if (isReplyError(err)) return command.slice(1).map(String);
      throw this.unavailable(err, 'key lookup');
    }
  }

  /** Maps a connection-level failure to `StoreUnavailableError`; commitd's own errors pass through. */
  unavailable(err: unknown, doing: string): unknown {
    if (err instanceof CommitdError) return err;
    return new StoreUnavailableError(`redis store ${this.name} is unavailable (${doing}): ${errorMessage(err)}`, {}, { cause: err });
  }

  close(): void {
    this.#closed = true;
    for (const conn of this.#idle.splice(0)) conn.disconnect();
    this.shared.disconnect();
  }
}

/** One session's driver: buffers commands, runs them with the marker in one MULTI at commit. */
class RedisDriver implements StoreDriver<RedisChange> {
  readonly #connections: RedisConnections;
  readonly #retentionSeconds: number;
  readonly #logger: Logger;
  #commands: (readonly (string | number)[])[] = [];

  constructor(connections: RedisConnections, retentionSeconds: number, logger: Logger) {
    this.#connections = connections;
    this.#retentionSeconds = Math.max(1, Math.ceil(retentionSeconds));
    this.#logger = logger;
  }

  findMarker(key: Uint8Array): Promise<Uint8Array | undefined> {
    return this.#connections.readMarker(key);
  }

  async open(): Promise<void> {
    this.#commands = [];
  }

  /** How many commands the session held when its current request started. */
  #saved = 0;

  /** One request's commands start (they are only buffered: nothing reached Redis yet). */
  async savepoint(): Promise<void> {
    this.#saved = this.#commands.length;
  }

  /** The request failed: drop the commands it added. */
  async rollbackToSavepoint(): Promise<void> {
    this.#commands.length = Math.min(this.#saved, this.#commands.length);
  }

  async releaseSavepoint(): Promise<void> {
    this.#saved = this.#commands.length;
  }

  async apply(change: RedisChange): Promise<void> {
    const [name] = change.command;
    if (typeof name !== 'string' || !REDIS_WRITE_COMMANDS.has(name.toUpperCase())) {
      throw new InvalidRedisCommandError(this.#connections.name, name);
    }
    // The allowlist holds only commands whose keys are all in their arguments, so the keys
    // Redis finds are every key the command can touch.
    const marker = (await this.#connections.keysOf(change.command)).find((key) => key.startsWith(REDIS_MARKER_PREFIX));
    if (marker !== undefined) {
      throw new BookkeepingError(
        'marker-key',
        `redis store ${this.#connections.name}: ${name.toUpperCase()} would touch ${JSON.stringify(marker)}; ${REDIS_BOOKKEEPING} belong to commitd`,
      );
    }
    this.#commands.push(change.command);
  }

  /**
   * Checks the marker, and has Redis check every command without running it: queued in a
   * MULTI that is then discarded. Unknown commands and wrong arities fail here, before the
   * commit point.
   */
  async prepare(key: Uint8Array): Promise<void> {
    await this.#withConnection('prepare', async (conn) => {
      const pipeline = conn.pipeline().getBuffer(markerKey(key)).call('MULTI');
      for (const [name, ...args] of this.#commands) pipeline.call(String(name), ...args);
      const replies = (await pipeline.call('DISCARD').exec()) as Reply[] | null;
      if (!replies) throw new StoreUnavailableError(`redis store ${this.#connections.name}: no reply to prepare`);
      const [markerError, stored] = replies[0] ?? [null, null];
      if (markerError) throw markerError;
      if (stored instanceof Buffer) throw new MarkerExistsError(key, fromHex(stored.toString('utf8')));
      const failures = failuresOf(replies, this.#commands, 2);
      if (failures.length > 0) {
        throw new ChangeRejectedError(`redis refused ${describeFailures(failures)}; nothing was applied`, { failed: failures });
      }
    });
  }

  async commit(key: Uint8Array, id: Uint8Array): Promise<void> {
    const marker = markerKey(key);
    await this.#withConnection('commit', async (conn) => {
      for (let attempt = 1; attempt <= MAX_WATCH_ATTEMPTS; attempt += 1) {
        await conn.watch(marker);
        const stored = await conn.getBuffer(marker);
        if (stored) {
          await conn.unwatch();
          throw new MarkerExistsError(key, fromHex(stored.toString('utf8')));
        }
        const transaction = conn.multi();
        for (const [name, ...args] of this.#commands) transaction.call(String(name), ...args);
        transaction.set(marker, toHex(id), 'EX', this.#retentionSeconds);
        const replies = await this.#exec(transaction);
        // null: the WATCH fired (someone wrote the marker key); the next round reads it.
        if (replies) return this.#checkExecReplies(key, replies);
      }
      throw new StoreUnavailableError(
        `redis store ${this.#connections.name}: the marker of key ${JSON.stringify(describeKey(key))} kept changing during ${MAX_WATCH_ATTEMPTS} commit attempts; retry`,
      );
    });
    this.#commands = [];
  }

  async rollback(): Promise<void> {
    this.#commands = [];
  }

  /** EXEC; an EXECABORT (Redis refused a queued command) becomes a rejection: nothing ran. */
  async #exec(transaction: ChainableCommander): Promise<Reply[] | null> {
    try {
      return (await transaction.exec()) as Reply[] | null;
    } catch (err) {
      if (!isReplyError(err)) throw err;
      throw new ChangeRejectedError(`redis refused the session's commands (${err.message}); nothing was applied`, {
        message: err.message,
      });
    }
  }

  /** EXEC ran everything; commands that failed there failed alone, and cannot be undone. */
  #checkExecReplies(key: Uint8Array, replies: readonly Reply[]): void {
    const failures = failuresOf(replies, this.#commands, 0);
    const markerError = replies[this.#commands.length]?.[0];
    if (failures.length === 0 && !markerError) return;
    const message =
      `redis ran the session under key ${JSON.stringify(describeKey(key))} but ${describeFailures(failures)} failed at EXEC; ` +
      `Redis cannot roll back, so the other commands ${markerError ? 'were applied (the marker was not written)' : 'and the marker were applied'}`;
    this.#logger.error({ key: describeKey(key), failed: failures }, message);
    throw new ChangeRejectedError(message, { failed: failures, markerWritten: !markerError });
  }

  /** Runs `step` on a dedicated connection; connection failures become `StoreUnavailableError`. */
  async #withConnection(doing: string, step: (conn: Redis) => Promise<void>): Promise<void> {
    const conn = await this.#connections.acquire();
    let clean = false;
    try {
      await step(conn);
      clean = true;
    } catch (err) {
      // After a reply error (ours or Redis's) the connection holds no WATCH or MULTI.
      clean = err instanceof CommitdError || isReplyError(err);
      if (isReplyError(err)) throw new StoreUnavailableError(`redis store ${this.#connections.name} failed (${doing}): ${err.message}`, {}, { cause: err });
      throw this.#connections.unavailable(err, doing);
    } finally {
      this.#connections.release(conn, clean);
    }
  }
}

function describeFailures(failures: readonly CommandFailure[]): string {
  return failures.map((failure) => `changes[${failure.index}] (${failure.command}: ${failure.message})`).join(', ');
}

/** The store's `url` is not a Redis URL (ioredis would take "notaurl" for a host name and retry forever). */
export class InvalidRedisUrlError extends CommitdError {
  constructor(storeName: string, url: string) {
    super('INVALID_REQUEST', `redis store ${storeName}: options.url: ${JSON.stringify(url)} is not a redis:// or rediss:// URL`);
  }
}

function assertRedisUrl(storeName: string, url: string): void {
  let parsed: URL | undefined;
  try {
    parsed = new URL(url);
  } catch {
    parsed = undefined;
  }
  if (!parsed || (parsed.protocol !== 'redis:' && parsed.protocol !== 'rediss:') || parsed.hostname === '') {
    throw new InvalidRedisUrlError(storeName, url.startsWith('redis') ? url.replace(/\/\/[^@/]*@/, '//…@') : url);
  }
}

/**
 * The built-in `redis` store type.
 *
 * Built on ioredis rather than node-redis: its `exec()` answers EXEC reply by reply
 * (`[error, result]` pairs, so a command failing at EXEC time is seen without losing the
 * others) and `null` when a WATCH voided the transaction — exactly what the commit protocol
 * branches on; `duplicate()` gives dedicated connections with the same settings;
 * `commandTimeout`, `maxRetriesPerRequest` and `enableOfflineQueue` bound every call while
 * Redis is down; and it is already a dependency (the test harness uses it).
 */
export const redisStoreType: StoreType<RedisOptions, RedisChange> = {
  type: 'redis',
  bookkeeping: REDIS_BOOKKEEPING,
  optionsSchema,
  changeSchema,
  create(options: RedisOptions, ctx: StoreContext): Store<RedisChange> {
    assertRedisUrl(ctx.name, options.url);
    const connections = new RedisConnections(options.url, ctx.name, ctx.logger, statementTimeoutMs(options.statementTimeout));
    return {
      name: ctx.name,
      type: 'redis',
      session: () => new HelperCommittable(ctx.name, new RedisDriver(connections, ctx.retentionSeconds, ctx.logger)),
      probe: async () => {
        await connections.shared.ping().catch((err: unknown) => {
          throw connections.unavailable(err, 'ping');
        });
      },
      close: async () => connections.close(),
    };
  },
};

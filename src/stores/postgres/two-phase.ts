/**
 * Two-phase mode of a `postgres` store: the gids of its prepared transactions, finding,
 * committing and rolling them back, and resolving those a crashed instance left behind.
 * See the store's module comment for how gids are formed and why.
 * @module
 */
import { createHash } from 'node:crypto';
import type pg from 'pg';
import { CommitdError, errorMessage } from '../../errors/core.ts';
import { describeKey, fromHex, toHex } from '../../core/keys.ts';
import type { OrphanDecision, StoreContext } from '../api.ts';
import { sqlstateOf } from './statements.ts';

/** Keys longer than this (in bytes) cannot be committed in two-phase mode: their gid would not fit. */
export const TWO_PHASE_MAX_KEY_BYTES = 91;

const GID_PREFIX = 'commitd:';

/** Two-phase mode was asked for where it cannot work (server settings, or a key too long for a gid). */
export class TwoPhaseUnsupportedError extends CommitdError {
  constructor(message: string) {
    super('INVALID_REQUEST', message);
  }
}

/** A fresh session found an unresolved prepared transaction for its key (two-phase mode). */
export class PreparedTransactionPendingError extends CommitdError {
  constructor(storeName: string, key: Uint8Array, gid: string) {
    super(
      'SESSION_BUSY',
      `${storeName} holds prepared transaction ${gid} for key ${JSON.stringify(describeKey(key))} from an earlier session; ` +
        'it must be committed or rolled back (resolveOrphans) before the key can begin again',
    );
  }
}

/** What two-phase mode runs its statements through: the store's pool (autocommit), and a connection of its own for the in-flight lock. */
export interface TwoPhaseDatabase {
  readonly name: string;
  query<R extends pg.QueryResultRow>(sql: string, params?: unknown[]): Promise<pg.QueryResult<R>>;
  connect(): Promise<pg.PoolClient>;
  release(client: pg.PoolClient, err?: Error): void;
}

/**
 * The in-flight lock (docs/recovery.md, gap 2): a session-level advisory lock per gid, held
 * by the connection of the session that may prepare the gid, from `open` until its prepared
 * transaction is finished. A live session holds it — even between PREPARE TRANSACTION and
 * its commit point, when a one-shot has no session record yet — so `resolveOrphans` leaves
 * its transaction alone; a session whose process died lost its connection, and the lock
 * with it. Two-key form (class, hashtext(gid)); changes cannot unlock it (guard.ts).
 */
const IN_FLIGHT_LOCK_CLASS = 0x636d7464; // 'cmtd'
export const IN_FLIGHT_LOCK = 'SELECT pg_try_advisory_lock($1::int, hashtext($2)) AS locked';
export const IN_FLIGHT_UNLOCK = 'SELECT pg_advisory_unlock($1::int, hashtext($2))';
export const inFlightLockParams = (gid: string): unknown[] => [IN_FLIGHT_LOCK_CLASS, gid];

/** The prepared transactions of one marker table. */
export class TwoPhase {
  readonly #db: TwoPhaseDatabase;
  /** `commitd:<tag>:`: the prefix of every gid of this marker table. */
  readonly #gidPrefix: string;

  private constructor(db: TwoPhaseDatabase, gidPrefix: string) {
    this.#db = db;
    this.#gidPrefix = gidPrefix;
  }

  /** Checks that the server allows prepared transactions and derives this marker table's gid prefix. */
  static async open(db: TwoPhaseDatabase): Promise<TwoPhase> {
    const { rows } = await db.query<{ max: number; db: string; schema: string | null }>(
      "SELECT current_setting('max_prepared_transactions')::int AS max, current_database() AS db, current_schema() AS schema",
    );
    const row = rows[0];
    if (!row || row.max <= 0) {
      throw new TwoPhaseUnsupportedError(
        `postgres store ${db.name} has twoPhase set, but the server has max_prepared_transactions = ${row?.max ?? 0}: ` +
          'set it above 0 (needs a server restart) or turn twoPhase off',
      );
    }
    if (row.schema === null) throw new Error(`postgres store ${db.name}: no schema of the search_path exists to hold commitd_sessions`);
    const tag = createHash('sha256').update(`${row.db}\0${row.schema}`).digest('hex').slice(0, 8);
    return new TwoPhase(db, `${GID_PREFIX}${tag}:`);
  }

  /** The gid of `key`'s prepared transaction. */
  gid(key: Uint8Array): string {
    if (key.length > TWO_PHASE_MAX_KEY_BYTES) {
      throw new TwoPhaseUnsupportedError(
        `postgres store ${this.#db.name} runs in two-phase mode, which takes keys of at most ${TWO_PHASE_MAX_KEY_BYTES} bytes; ` +
          `key ${JSON.stringify(describeKey(key))} has ${key.length}`,
      );
    }
    return this.#gidPrefix + toHex(key);
  }

  /** The key a gid of this marker table was derived from; undefined for anyone else's gid. */
  keyOfGid(gid: string): Uint8Array | undefined {
    const hex = gid.startsWith(this.#gidPrefix) ? gid.slice(this.#gidPrefix.length) : '';
    return /^(?:[0-9a-f]{2})+$/.test(hex) ? fromHex(hex) : undefined;
  }

  /** Gids of this marker table's prepared transactions, oldest first. */
  async listPrepared(): Promise<string[]> {
    const { rows } = await this.#db.query<{ gid: string }>(
      'SELECT gid FROM pg_prepared_xacts WHERE database = current_database() AND starts_with(gid, $1) ORDER BY prepared',
      [this.#gidPrefix],
    );
    return rows.map((row) => row.gid);
  }

  async isPrepared(gid: string): Promise<boolean> {
    const { rows } = await this.#db.query('SELECT 1 FROM pg_prepared_xacts WHERE gid = $1 AND database = current_database()', [gid]);
    return rows.length > 0;
  }

  /** `COMMIT PREPARED`; false when no such transaction exists (already finished by someone). */
  commitPrepared(gid: string): Promise<boolean> {
    return this.#finishPrepared('COMMIT', gid);
  }

  /** `ROLLBACK PREPARED`; false when no such transaction exists (already finished by someone). */
  rollbackPrepared(gid: string): Promise<boolean> {
    return this.#finishPrepared('ROLLBACK', gid);
  }

  /**
   * Commits or rolls back the prepared transactions of this marker table, as `decide` says
   * for each key; `keep` leaves one alone. Tries every one, then throws the first failure.
   */
  async resolveOrphans(logger: StoreContext['logger'], decide: OrphanDecision): Promise<void> {
    const failures: unknown[] = [];
    for (const gid of await this.listPrepared()) {
      const key = this.keyOfGid(gid);
      if (!key) continue;
      try {
        const unclaimed = await this.#unclaimed(gid, async () => {
          const decision = await decide(key);
          if (decision === 'commit') await this.commitPrepared(gid);
          else if (decision === 'rollback') await this.rollbackPrepared(gid);
          if (decision !== 'keep') logger.info({ key: describeKey(key), gid, decision }, 'resolved a prepared transaction');
        });
        if (!unclaimed) logger.debug({ key: describeKey(key), gid }, 'prepared transaction in flight on a live connection: kept');
      } catch (err) {
        logger.warn({ key: describeKey(key), gid, error: errorMessage(err) }, 'could not resolve a prepared transaction');
        failures.push(err);
      }
    }
    if (failures.length === 1) throw failures[0];
    if (failures.length > 1)
      throw new AggregateError(failures, `postgres store ${this.#db.name}: ${failures.length} prepared transactions could not be resolved`);
  }

  /**
   * Runs `work` while holding `gid`'s in-flight lock, on a connection of its own; false,
   * without running it, when a live session holds the lock (its transaction is in flight).
   */
  async #unclaimed(gid: string, work: () => Promise<void>): Promise<boolean> {
    const client = await this.#db.connect();
    let broken: Error | undefined;
    try {
      const { rows } = await client.query<{ locked: boolean }>(IN_FLIGHT_LOCK, inFlightLockParams(gid));
      if (!rows[0]?.locked) return false;
      try {
        await work();
      } finally {
        await client.query(IN_FLIGHT_UNLOCK, inFlightLockParams(gid)).catch((err: Error) => {
          broken = err;
        });
      }
      return true;
    } catch (err) {
      broken ??= err instanceof Error ? err : new Error(String(err));
      throw err;
    } finally {
      this.#db.release(client, broken);
    }
  }

  async #finishPrepared(verb: 'COMMIT' | 'ROLLBACK', gid: string): Promise<boolean> {
    try {
      // A gid is `commitd:` and hex digits only (see `gid`), so it is safe inside the literal.
      await this.#db.query(`${verb} PREPARED '${gid}'`);
      return true;
    } catch (err) {
      if (sqlstateOf(err) === '42704') return false;
      throw err;
    }
  }
}

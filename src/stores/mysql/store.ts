/**
 * The `mysql` store type, for MySQL (5.7, 8) and MariaDB (10.5 and later). A session holds
 * one pooled connection and one transaction from `begin` to `commit`; changes (`{sql,
 * params?}`) run at once, so a rejected statement fails its apply. At prepare the marker row
 * goes into `commitd_sessions` in the same transaction.
 *
 * MySQL commits DDL implicitly, so a session cannot hold it: a change that would commit
 * implicitly is refused with `400` (rule `implicit-commit`, see `guard.ts` for the list).
 * Every statement runs under `statementTimeout` (default 5 s), enforced by commitd itself —
 * past it the statement is stopped with `KILL QUERY` and the change answers
 * `StatementTimeoutError` — so it works the same on MySQL and MariaDB and no setting of a
 * change can lift it. The server closes a session connection idle for 60 s (a frozen
 * commitd), releasing its row locks.
 *
 * XA mode (`xa: true`) runs the session as `XA START`; prepare ends it with `XA END` and
 * `XA PREPARE`, before the commit point; commit is `XA COMMIT`. The prepared work outlives
 * the connection, this process and a server restart, and whoever adopts the session commits
 * it instead of re-applying the changes; orphans (prepared, without a session) are decided at
 * recovery as two-phase postgres does. The xid is derived from the key (`xa.ts`).
 *
 * Limits: one store per database (the marker table lives in the connection's database).
 * Markers are kept forever. Keys hold at most 512 bytes (111 in XA mode).
 *
 * The parts: `guard.ts` (what a change may run), `statements.ts` (how failures are sorted),
 * `database.ts` (the pool, deadlines and the marker table), `driver.ts` (one session),
 * `xa.ts` (XA transactions and orphans).
 * @module
 */
import { Type } from '@sinclair/typebox';
import type { OrphanDecision, Store, StoreContext, StoreType } from '../api.ts';
import { StatementTimeoutOption } from '../limits.ts';
import { MysqlDatabase, type MysqlOptions } from './database.ts';
import { RecoveryAwareSession } from '../recovery-aware.ts';
import { MysqlDriver } from './driver.ts';
import type { MysqlChange } from './statements.ts';
import { XaTransactions } from './xa.ts';

export type { MysqlOptions } from './database.ts';
export type { MysqlChange } from './statements.ts';
export { XA_MAX_KEY_BYTES, XaPendingError } from './xa.ts';

const optionsSchema = Type.Object(
  {
    connectionString: Type.Optional(Type.String({ minLength: 1, description: 'mysql://user:password@host:3306/database' })),
    host: Type.Optional(Type.String({ minLength: 1 })),
    port: Type.Optional(Type.Integer({ minimum: 1, maximum: 65535 })),
    user: Type.Optional(Type.String()),
    password: Type.Optional(Type.String()),
    database: Type.Optional(Type.String({ minLength: 1 })),
    xa: Type.Optional(Type.Boolean({ description: 'prepare with XA PREPARE before the commit point' })),
    statementTimeout: Type.Optional(StatementTimeoutOption),
    poolSize: Type.Optional(Type.Integer({ minimum: 2 })),
  },
  {
    additionalProperties: false,
    // A URL, or its parts: exactly one of connectionString and host.
    oneOf: [
      { required: ['connectionString'], not: { required: ['host'] } },
      { required: ['host'], not: { required: ['connectionString'] } },
    ],
  },
);

const changeSchema = Type.Object(
  {
    sql: Type.String({ minLength: 1 }),
    params: Type.Optional(Type.Array(Type.Union([Type.String(), Type.Number(), Type.Boolean(), Type.Null()]))),
  },
  { additionalProperties: false },
);

/** The built-in `mysql` store type. */
export const mysqlStoreType: StoreType<MysqlOptions, MysqlChange> = {
  type: 'mysql',
  bookkeeping: 'the marker table commitd_sessions',
  optionsSchema,
  changeSchema,
  async create(options: MysqlOptions, ctx: StoreContext): Promise<Store<MysqlChange>> {
    const db = await MysqlDatabase.open(options, ctx);
    let xa: XaTransactions | undefined;
    try {
      if (options.xa) xa = await XaTransactions.open(db);
      await db.ensureMarkerTable();
    } catch (err) {
      await db.close();
      throw err;
    }
    return {
      name: ctx.name,
      type: 'mysql',
      session: () => new RecoveryAwareSession(ctx.name, new MysqlDriver(db, xa)),
      ...(xa ? { resolveOrphans: (decide: OrphanDecision) => (xa as XaTransactions).resolveOrphans(ctx.logger, decide) } : {}),
      close: () => db.close(),
    };
  },
};

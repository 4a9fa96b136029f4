/**
 * The `sqlite` store type: changes are SQL statements, checked when they arrive, buffered
 * until `prepare`, then run in one transaction together with the session's marker row.
 * Sessions on a store take the file's single write lock in turn and decided sessions commit
 * in groups: see `database.ts`. Which statements a change may run: see `statements.ts`.
 * Each store's connections live on a thread of their own (`thread.ts`, `worker.ts`), so no
 * statement, commit or fsync runs on the event loop.
 * @module
 */
import { Type } from '@sinclair/typebox';
import { HelperCommittable } from '../helper.ts';
import type { Store, StoreContext, StoreType } from '../api.ts';
import { StatementTimeoutOption } from '../limits.ts';
import type { SqliteOptions } from './database.ts';
import type { SqliteChange } from './statements.ts';
import { SqliteThread } from './thread.ts';

export type { SqliteOptions } from './database.ts';
export type { SqliteChange } from './statements.ts';

const SqlValue = Type.Union([Type.String(), Type.Number(), Type.Boolean(), Type.Null()]);

const optionsSchema = Type.Object(
  {
    path: Type.String({ minLength: 1 }),
    busyTimeoutMs: Type.Optional(Type.Integer({ minimum: 0 })),
    statementTimeout: Type.Optional(StatementTimeoutOption),
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

/**
 * The built-in `sqlite` store type. Changes are checked when they arrive and run at
 * `prepare`; sessions on one store take the file's single write lock in turn (FIFO), from
 * prepare until decided, and decided sessions commit in groups (see `database.ts`).
 */
export const sqliteStoreType: StoreType<SqliteOptions, SqliteChange> = {
  type: 'sqlite',
  optionsSchema,
  changeSchema,
  async create(options: SqliteOptions, ctx: StoreContext): Promise<Store<SqliteChange>> {
    const thread = await SqliteThread.open(options);
    return {
      name: ctx.name,
      type: 'sqlite',
      session: () => new HelperCommittable(ctx.name, thread.driver()),
      close: () => thread.close(),
    };
  },
};

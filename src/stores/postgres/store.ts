/**
 * The `postgres` store type. A session holds one pooled connection and one transaction from
 * `begin` to `commit`; changes (`{sql, params?}`) run at once, so a rejected statement fails
 * its apply. At prepare the marker row goes into `commitd_sessions` in the same transaction.
 *
 * A frozen commitd must not hold row locks forever: the server ends a transaction left idle
 * longer than `idleInTransactionTimeoutMs`, and every statement is bounded by
 * `statementTimeout` (server side, default 5 s; `statementTimeoutMs` is its older spelling)
 * plus a margin (client side, for a server that stopped answering). A statement past it
 * answers `StatementTimeoutError`. Changes are checked before they run (`guard.ts`): none
 * can reach `commitd_sessions` or lift the limit.
 *
 * Two-phase mode (`twoPhase: true`) ends prepare with `PREPARE TRANSACTION`: the prepared
 * work outlives the connection, this process and a server restart, and whoever adopts the
 * session commits it (`COMMIT PREPARED`) instead of re-applying the changes.
 *
 * - gid: `commitd:<tag>:<hex of the key bytes>`, where `<tag>` is 8 hex digits of a hash of
 *   the database and schema holding the marker table. Gids are unique per PostgreSQL
 *   *cluster*, so two stores on one server (different databases) must not share them; the
 *   hex key decodes back for `resolveOrphans`. Gids are limited to 199 bytes, so keys of
 *   more than {@link TWO_PHASE_MAX_KEY_BYTES} bytes cannot use two-phase mode (`begin` fails).
 * - Adoption: `beginRecovery` on a key with no marker but a prepared transaction commits
 *   that transaction and enters skip mode. `begin` (a fresh session) on such a key fails with
 *   `PreparedTransactionPendingError` until `resolveOrphans` decided its fate.
 *
 * Limits: one store per marker table (a database, or a schema chosen by `search_path`):
 * two stores sharing `commitd_sessions` would see each other's markers. Markers are kept
 * forever (one small row per session), so a key stays committed after the coordinator's
 * results expired. `poolSize` bounds the sessions open at once on this store, and must be at
 * least 2: a conflicting marker is read on a second connection.
 *
 * The parts: `guard.ts` (what a change may run), `statements.ts` (how failures are sorted), `database.ts`
 * (the pool and the marker table), `driver.ts` (one session), `two-phase.ts` (prepared
 * transactions and orphans).
 * @module
 */
import { Type } from '@sinclair/typebox';
import { StatementTimeoutOption } from '../limits.ts';
import type { OrphanDecision, Store, StoreContext, StoreType } from '../api.ts';
import { PostgresDatabase, type PostgresOptions } from './database.ts';
import { RecoveryAwareSession } from '../recovery-aware.ts';
import { PostgresDriver } from './driver.ts';
import type { PostgresChange } from './statements.ts';

export type { PostgresOptions } from './database.ts';
export type { PostgresChange } from './statements.ts';
export { PreparedTransactionPendingError, TWO_PHASE_MAX_KEY_BYTES, TwoPhaseUnsupportedError } from './two-phase.ts';

const optionsSchema = Type.Object(
  {
    connectionString: Type.String({ minLength: 1 }),
    poolSize: Type.Optional(Type.Integer({ minimum: 2 })),
    statementTimeout: Type.Optional(StatementTimeoutOption),
    statementTimeoutMs: Type.Optional(Type.Integer({ minimum: 1 })),
    idleInTransactionTimeoutMs: Type.Optional(Type.Integer({ minimum: 1 })),
    twoPhase: Type.Optional(Type.Boolean()),
  },
  { additionalProperties: false },
);

const changeSchema = Type.Object(
  {
    sql: Type.String({ minLength: 1 }),
    params: Type.Optional(Type.Array(Type.Unknown())),
  },
  { additionalProperties: false },
);

/** The built-in `postgres` store type. */
export const postgresStoreType: StoreType<PostgresOptions, PostgresChange> = {
  type: 'postgres',
  optionsSchema,
  changeSchema,
  async create(options: PostgresOptions, ctx: StoreContext): Promise<Store<PostgresChange>> {
    const db = await PostgresDatabase.open(options, ctx);
    const twoPhase = db.twoPhase;
    return {
      name: ctx.name,
      type: 'postgres',
      session: () => new RecoveryAwareSession(ctx.name, new PostgresDriver(db)),
      probe: async () => {
        await db.query('SELECT 1');
      },
      ...(twoPhase ? { resolveOrphans: (decide: OrphanDecision) => twoPhase.resolveOrphans(ctx.logger, decide) } : {}),
      close: () => db.close(),
    };
  },
};

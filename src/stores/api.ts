/**
 * The plugin API, exported as `commitd/plugin`: what a store type (built in or plugin)
 * provides, what commitd gives it, and everything a plugin needs to write one — the
 * committable helper, the store errors and the key helpers. A plugin module default-exports
 * a `StoreType` and imports nothing else from commitd.
 * @module
 */
import type { Logger } from 'pino';
import type { Committable } from '../core/committable.ts';

export { HelperCommittable, type StoreDriver } from './helper.ts';
export {
  BookkeepingError,
  ChangeRejectedError,
  MarkerConflictError,
  MarkerExistsError,
  SessionSpoiledError,
  StatementTimeoutError,
  StoreUnavailableError,
  atChange,
  isConnectionLost,
} from './errors.ts';
export { describeKey, fromHex, toHex } from '../core/keys.ts';

/** A JSON Schema object (TypeBox schemas are JSON Schemas). */
export type JsonSchema = Readonly<Record<string, unknown>>;

/** What commitd hands a store type when it creates a store. */
export interface StoreContext {
  /** The store's configured name, e.g. `orders`. */
  readonly name: string;
  /** A child logger carrying `store`. */
  readonly logger: Logger;
  /** commitd's data directory: relative store paths resolve against the working directory, not this. */
  readonly dataDir: string;
  /** How long committed results (and expiring markers, e.g. Redis) are kept, in seconds. */
  readonly retentionSeconds: number;
  /** The coordinator's etcd endpoints when it runs on etcd (the `etcd` store type's default). */
  readonly etcdEndpoints?: readonly string[];
}

/** One session on one store: a Committable that also takes changes and prepares. */
export interface StoreSession<Change = unknown> extends Committable {
  /** Applies (or buffers) one change, already valid against the type's `changeSchema`. */
  apply(change: Change): Promise<void>;
  /**
   * Applies the changes of one `/changes` request all or nothing: when it throws, the
   * session on this store is as it was before the call and goes on (DESIGN "Session
   * lifecycle", step 3) — unless it throws `SessionSpoiledError`, which ends the session.
   * A rejected change is named by its index (`atChange`). Optional: without it, a failed
   * change ends the session. The committable helper implements it over the driver's
   * optional `savepoint`/`rollbackToSavepoint`/`releaseSavepoint` and `reopen`.
   */
  applyAll?(changes: readonly Change[]): Promise<void>;
  /**
   * `begin`, `applyAll(changes)` and `prepare` in one step, for a session whose changes are
   * all known when it begins (a one-shot): throws what they would, `AlreadyCommittedError`
   * included, a rejected change named by its index. Optional: the committable helper has it
   * when its driver has `openAndPrepare` (sqlite: one message to the store's thread).
   */
  beginAndPrepare?(key: Uint8Array, changes: readonly Change[]): Promise<void>;
  /** Makes the changes ready to commit; fails now if they cannot (before the commit point). */
  prepare(key: Uint8Array): Promise<void>;
  /**
   * The session will commit: its commit point is written (or it is rolled forward).
   * Called for every store, in commit order, before any store's `commit`; prepares first
   * if needed. A store may hand what it holds in-process for this session to the next one
   * here (sqlite: the file's write lock); `commit` then returns once the data is durable.
   * Optional: without it, `commit` does it all.
   */
  decide?(key: Uint8Array): Promise<void>;
  /**
   * The session stops at or past its commit point, where it may already be committed:
   * free what this process holds, undo nothing — whoever recovers the session finishes it.
   * Optional: without it `cancel` is called (a database rolls back its open transaction;
   * recovery re-applies the logged changes).
   */
  release?(): Promise<void>;
  /** True when recovery found this store already committed (applies are ignored). */
  readonly skipping: boolean;
  /**
   * True when the store queues `prepare` and `beginAndPrepare` for what they wait on (a
   * lock of this process's own) in the order they are called, at the call itself. A
   * session then asks all such stores in one synchronous step, so that every queue serves
   * sessions in the same order and none can deadlock: the stores hold their locks for a
   * shorter time than when each waits for the one before it (sqlite). Optional: false.
   */
  readonly queuesInCallOrder?: boolean;
}

/** What commitd tells a store about the session it opens. */
export interface StoreSessionContext {
  /**
   * Names this attempt of the key: the same across retries and recoveries of the attempt,
   * a new one whenever the key begins afresh after a cancel (kept in the session record).
   */
  readonly attempt: string;
}

/** Decides the fate of a prepared transaction found without its session (two-phase stores). */
export type OrphanDecision = (key: Uint8Array) => Promise<'commit' | 'rollback' | 'keep'>;

/** A configured store: long-lived (pools, connections), hands out one session per commit. */
export interface Store<Change = unknown> {
  readonly name: string;
  readonly type: string;
  /**
   * Resolves when the store's server answers (a round trip), rejects when it cannot be
   * reached. commitd bounds it in time: at registration (an unreachable store is refused),
   * at start-up (logged at once) and for `/readyz`. Optional: a store without it counts as
   * up while open.
   */
  probe?(): Promise<void>;
  /** A new session on this store. */
  session(context?: StoreSessionContext): StoreSession<Change>;
  /**
   * Present on participants (stores that hold a reservation between prepare and commit,
   * such as `http`): undoes what a session under `key` and `attempt` may have left before
   * its commit point, when recovery deletes the `active` record of a dead instance. A
   * session on such a store writes its record before prepare, one-shots included.
   */
  cancelAttempt?(key: Uint8Array, attempt: string): Promise<void>;
  /** Resolves prepared transactions left by crashed instances (stores with a real prepare). */
  resolveOrphans?(decide: OrphanDecision): Promise<void>;
  /** Releases connections and files. */
  close(): Promise<void>;
}

/**
 * A store type: the default export of a plugin module. `optionsSchema` and `changeSchema`
 * are JSON Schemas; commitd validates options before `create` and every change before
 * `apply`, so neither has to re-check shapes.
 */
export interface StoreType<Options = unknown, Change = unknown> {
  readonly type: string;
  /**
   * What the type keeps for itself in the store, in one line, e.g. `marker keys
   * commitd:session:*` (DESIGN "The boundary", point 1). A type that declares it must refuse
   * every change that touches it with `BookkeepingError` from its driver's `apply`, before
   * anything of the session is applied.
   */
  readonly bookkeeping?: string;
  readonly optionsSchema: JsonSchema;
  readonly changeSchema: JsonSchema;
  create(options: Options, ctx: StoreContext): Promise<Store<Change>> | Store<Change>;
}

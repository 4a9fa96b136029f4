/**
 * The coordinator's public surface: what the HTTP layer (and tests) call.
 * @module
 */
import type { StoreDefinition } from '../stores/registry.ts';
import type { InstanceView } from './inspect.ts';
import type { ChangeLog } from './records.ts';

/** Session states as seen from outside. */
export type SessionState = 'active' | 'committing' | 'committed' | 'failed';

/** A committed session: the answer to commit, and to every replay of it. */
export interface CommittedView {
  readonly key: string;
  readonly state: 'committed';
  /** 32 lower-case hex digits. */
  readonly sessionId: string;
  /** Each store's ID (hex), by store name. */
  readonly stores: Readonly<Record<string, string>>;
  readonly committedAt?: string;
  /**
   * Set when the answer is a result served again (commit retry, one-shot retry, begin of a
   * committed key); not part of the reply body: the HTTP layer sends `Idempotent-Replayed: true`.
   */
  readonly replayed?: true;
}

/** An open session as `begin` answers it. */
export interface ActiveView {
  readonly key: string;
  readonly state: 'active';
  /** True when a crashed session under this key was resumed (`beginRecovery`). */
  readonly recovery: boolean;
  readonly stores: readonly string[];
}

/** An operator's action on a session, as its audit record keeps it. */
export interface SessionAudit {
  readonly action: 'retry' | 'abandon';
  /** The principal (token name) that asked. */
  readonly by: string;
  /** ISO 8601. */
  readonly at: string;
}

/** The states `GET /v1/sessions?state=` lists by. */
export type ListableState = 'active' | 'committing' | 'failed' | 'committed' | 'abandoned';

/** What `GET /v1/sessions/:key` shows, and each entry of a listing (only a listing shows `abandoned`). */
export interface SessionView {
  readonly key: string;
  readonly state: SessionState | 'abandoned';
  /** Store names (open sessions) or store IDs by name (committed). */
  readonly stores: readonly string[] | Readonly<Record<string, string>>;
  readonly sessionId?: string;
  readonly owner?: string;
  readonly startedAt?: string;
  readonly committedAt?: string;
  /** Why a `failed` session failed. */
  readonly error?: string;
  /** Operators' actions on the session within the retention period, oldest first (`GET` only). */
  readonly audit?: readonly SessionAudit[];
  /** Who abandoned an `abandoned` session, and when. */
  readonly abandonedBy?: string;
  readonly abandonedAt?: string;
}

/** One page of a listing, newest first; `nextCursor` fetches the next one. */
export interface SessionPage {
  readonly sessions: readonly SessionView[];
  readonly nextCursor?: string;
}

/** A catalogued store (DESIGN "Store catalog"). */
export interface StoreInfo {
  readonly name: string;
  readonly type: string;
  /** `config`: from the config file; `runtime`: registered with `POST /v1/stores`. */
  readonly origin?: 'config' | 'runtime';
  /** As given, `{"env": …}` values as such, credentials redacted. */
  readonly options?: unknown;
  readonly registeredBy?: string;
  readonly registeredAt?: string;
  /** `down`: not open on this instance (yet); `error` says why. */
  readonly status?: 'open' | 'down';
  readonly error?: string;
}

/** A store removal, kept for the retention period. */
export interface StoreRemoval {
  readonly name: string;
  readonly type: string;
  readonly by: string;
  readonly at: string;
}

/** One store in `/readyz`. */
export interface StoreHealth {
  readonly name: string;
  readonly status: 'up' | 'down';
  readonly error?: string;
}

/** What `/readyz` answers when the KV is reachable. */
export interface ReadyView {
  readonly status: 'ok';
  readonly stores: readonly StoreHealth[];
}

export type { StoreDefinition } from '../stores/registry.ts';

/** The operations the HTTP API maps onto. Errors are the classes of `./errors.ts`. */
export interface SessionCoordinator {
  /** Begins a session on `stores` (all configured stores when absent). */
  begin(key: string, stores?: readonly string[]): Promise<ActiveView | CommittedView>;
  /** Applies changes to one store of an open session, in order. */
  apply(key: string, store: string, changes: readonly unknown[]): Promise<{ key: string; store: string; applied: number }>;
  /** Commits; every retry gets the same answer while the result is retained. */
  commit(key: string): Promise<CommittedView>;
  /** Cancels an open session. */
  cancel(key: string): Promise<{ key: string; state: 'cancelled' }>;
  /** Begin + apply + commit in one call. */
  commitOnce(key: string, changes: Readonly<Record<string, readonly unknown[]>>): Promise<CommittedView>;
  /** The session's state, or undefined when there is none. */
  get(key: string): Promise<SessionView | undefined>;
  /**
   * A page of sessions of one state, newest first (no state: the open and failed ones);
   * `cursor` is a page's `nextCursor`.
   */
  list(query?: { state?: ListableState; limit?: number; cursor?: string }): Promise<SessionPage>;
  /** Operator action on a `failed` session; `by` names the sender in the audit record. */
  resolve(key: string, action: 'retry' | 'abandon', by?: string): Promise<SessionView | { key: string; state: 'abandoned' }>;
  /** The instances whose lease is alive. */
  instances(): Promise<InstanceView[]>;
  /** A session's change log as the KV holds it (secrets masked), or undefined. */
  sessionLog(key: string): Promise<ChangeLog | undefined>;
  listStores(): StoreInfo[];
  /** Registers a store in the catalog; `by` names who asked (audit). */
  addStore(definition: StoreDefinition, by?: string): Promise<StoreInfo>;
  removeStore(name: string, by?: string): Promise<void>;
  /** Store removals within the retention period, newest first. */
  storeRemovals?(): Promise<StoreRemoval[]>;
  /** Resolves with each store up or down when the KV answers; rejects with ServiceUnavailableError otherwise. */
  ready(): Promise<ReadyView>;
}

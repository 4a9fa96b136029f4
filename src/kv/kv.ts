/**
 * The KV contract: typed, versioned storage where every value carries the revision it
 * was read at and every write is a conditional operation. Implemented by the etcd
 * backend (`etcd.ts`) and the embedded SQLite backend (`sqlite.ts`).
 * @module
 */

/** One stored value with the revision of its last modification. */
export interface KvEntry {
  readonly key: string;
  readonly value: string;
  /** Modification revision: strictly increases with every write to the KV. */
  readonly revision: number;
}

/** How fresh a read must be. */
export type ReadConsistency = 'linearizable' | 'serializable';

/** Options of a read. */
export interface ReadOptions {
  /** `linearizable` (default) for reads that decide something; `serializable` may be stale. */
  readonly consistency?: ReadConsistency;
}

/** A lease: keys attached to it are deleted when it expires or is revoked. */
export interface KvLease {
  /** Backend-specific lease id. */
  readonly id: string;
  readonly ttlSeconds: number;
  /**
   * Until when (`performance.now()` milliseconds) the lease is certainly alive in the KV:
   * the send time of the last grant or renewal the KV confirmed, plus the TTL. The KV
   * cannot expire it earlier. `-Infinity` once lost, released or revoked.
   */
  readonly heldUntil: number;
  /** Starts keeping the lease alive; `onLost` fires once if it expires or cannot be renewed. */
  keepAlive(onLost: (reason: Error) => void): void;
  /** Revokes the lease and deletes the keys attached to it. */
  revoke(): Promise<void>;
  /** Stops keep-alive without revoking (the lease then expires after its TTL). */
  release(): void;
}

/** Expiry of a written value: a time-to-live in seconds or an existing lease. */
export interface WriteOptions {
  /** Delete the value after at least this many seconds (backends may round up). */
  readonly ttlSeconds?: number;
  /** Attach the value to this lease (takes precedence over `ttlSeconds`). */
  readonly lease?: KvLease;
}

/** How a transaction is made durable. */
export interface TxnOptions {
  /**
   * The write need not survive a failure of the machine (power loss, kernel crash) until
   * the KV's next durable write: it still survives a crash of the process, and a machine
   * failure can lose only lazy writes made after the last durable one, never a durable
   * write or a write out of order. Only for writes whose loss recovery already tolerates.
   * The embedded backend then skips the fsync of its commit; etcd always writes durably.
   */
  readonly lazySync?: boolean;
}

/** An operation inside a transaction. All conditions hold or nothing is applied. */
export type KvOp =
  | { readonly type: 'create'; readonly key: string; readonly value: string; readonly options?: WriteOptions }
  | { readonly type: 'update'; readonly key: string; readonly value: string; readonly revision: number; readonly options?: WriteOptions }
  | { readonly type: 'delete'; readonly key: string; readonly revision: number }
  /** Condition only: the key exists (`exists: true`) or not; optionally at `revision`. */
  | { readonly type: 'check'; readonly key: string; readonly exists: boolean; readonly revision?: number };

/**
 * What a watch reports about the keys under its prefix, in revision order. `snapshot` is
 * the whole prefix: first, and again after the watch was lost (disconnected past what the
 * KV keeps, compacted): the watcher then re-lists instead of missing changes.
 */
export type KvWatchEvent =
  | { readonly type: 'snapshot'; readonly entries: readonly KvEntry[] }
  | { readonly type: 'put'; readonly entry: KvEntry }
  | { readonly type: 'delete'; readonly key: string };

/** A running watch; `close` stops its events. */
export interface KvWatch {
  close(): void;
}

/** The coordinator's storage. Keys are plain strings; backends apply their namespace. */
export interface Kv {
  /** Reads one key; `undefined` when absent. */
  get(key: string, options?: ReadOptions): Promise<KvEntry | undefined>;
  /** Reads every key starting with `prefix`, in ascending key order. */
  list(prefix: string, options?: ReadOptions): Promise<KvEntry[]>;
  /** Creates `key`; fails with `AlreadyExistsError` if present. Returns the new revision. */
  create(key: string, value: string, options?: WriteOptions): Promise<number>;
  /** Replaces `key` if it is at `revision`; else `VersionMismatchError`. Returns the new revision. */
  update(key: string, value: string, revision: number, options?: WriteOptions): Promise<number>;
  /** Deletes `key` if it is at `revision`; else `VersionMismatchError`. */
  delete(key: string, revision: number): Promise<void>;
  /** Applies all `ops` atomically or none (`ConstraintViolatedError`). Returns the revision. */
  txn(ops: readonly KvOp[], options?: TxnOptions): Promise<number>;
  /**
   * Watches every key starting with `prefix`: `onEvent` gets a `snapshot` at once (the
   * initial list), then each put and delete; a lost watch re-lists (another `snapshot`).
   * `onError` hears why a watch was lost or a re-list failed; the watch retries on its own.
   */
  watch(prefix: string, onEvent: (event: KvWatchEvent) => void, onError?: (err: Error) => void): KvWatch;
  /** Grants a lease of `ttlSeconds`. */
  grantLease(ttlSeconds: number): Promise<KvLease>;
  /** Resolves when the KV answers a linearizable read; rejects with `UnavailableError`. */
  ping(): Promise<void>;
  /** Releases connections; pending calls may fail. */
  close(): Promise<void>;
}

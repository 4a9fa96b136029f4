/**
 * The `etcd` store type. Changes (`{op: "put" | "delete", key, value?}`, keys relative to the
 * store's `prefix`) are buffered; commit is one etcd transaction: if the marker
 * `<prefix>commitd/sessions/<key>` was never created, apply every change and create the
 * marker (value: the session ID in hex); else read the marker back, in the same round trip.
 *
 * Decisions:
 * - The marker lives under the store's prefix, so it is covered by the same etcd
 *   permissions; `commitd/` under the prefix is reserved and changes may not touch it.
 * - etcd refuses a transaction of more than `--max-txn-ops` operations (default 128). A
 *   session writes at most {@link ETCD_MAX_CHANGED_KEYS} distinct keys (plus the marker);
 *   the next one fails at apply with `TooManyOperationsError`. Splitting into several
 *   transactions would give up atomicity, so it is never done. Several changes to one key
 *   count once: only the last one is sent (etcd refuses a key twice in one transaction).
 * - Markers expire after the retention period (`ctx.retentionSeconds`), like the
 *   coordinator's results, so etcd does not grow forever. They share one lease per period
 *   of 1 % of the retention (at least 1 s), not a lease per commit, and live between
 *   retention and retention + 1 %. A recovery of an older session re-applies.
 * - Request size is etcd's (`--max-request-bytes`, default 1.5 MiB): larger sessions are
 *   rejected at commit.
 * @module
 */
import { Type } from '@sinclair/typebox';
import { Etcd3, type Namespace } from 'etcd3';
import { CommitdError, errorMessage } from '../../errors/core.ts';
import { describeKey, fromHex, toHex } from '../../core/keys.ts';
import { deadlineIn, type Deadline } from '../../kv/deadline.ts';
import { isEtcdUnavailable, isLeaseInvalid } from '../../kv/etcd-errors.ts';
import { callEtcd, type CallOptions } from '../../kv/etcd-rpc.ts';
import { LeaseBuckets } from '../../kv/lease-buckets.ts';
import { BookkeepingError } from '../errors.ts';
import { StatementTimeoutOption, statementTimeoutMs } from '../limits.ts';
import { ChangeRejectedError, HelperCommittable, MarkerExistsError, StoreUnavailableError, type StoreDriver } from '../helper.ts';
import type { Store, StoreContext, StoreType } from '../api.ts';

/** Options of an `etcd` store. */
export interface EtcdOptions {
  /** etcd client URLs; default: the coordinator's etcd endpoints. */
  readonly endpoints?: readonly string[];
  /** Prepended to every key of a change, e.g. `/app/`. */
  readonly prefix: string;
  /** Bound of every etcd request, retries inside etcd3 included: seconds, or "5s", "500ms"; default 5 s. */
  readonly statementTimeout?: number | string;
}

/** One change: put or delete one key (relative to the store's prefix). */
export type EtcdChange = { readonly op: 'put'; readonly key: string; readonly value: string } | { readonly op: 'delete'; readonly key: string };

/** Distinct keys one session may change: etcd's default `--max-txn-ops` (128) minus the marker. */
export const ETCD_MAX_CHANGED_KEYS = 127;

/** Keys under the prefix that belong to commitd. */
export const ETCD_RESERVED_PREFIX = 'commitd/';
const MARKER_DIR = `${ETCD_RESERVED_PREFIX}sessions/`;

/** What the `etcd` type keeps for itself (DESIGN "The boundary", point 1). */
const ETCD_BOOKKEEPING = `keys <prefix>${ETCD_RESERVED_PREFIX}* (markers <prefix>${MARKER_DIR}<key>)`;

// Reserved keys are refused by `apply` with BookkeepingError (naming the rule), not here.
const keySchema = Type.String({ minLength: 1 });

const optionsSchema = Type.Object(
  {
    endpoints: Type.Optional(Type.Array(Type.String({ minLength: 1 }), { minItems: 1 })),
    prefix: Type.String(),
    statementTimeout: Type.Optional(StatementTimeoutOption),
  },
  { additionalProperties: false },
);

const changeSchema = Type.Union([
  Type.Object({ op: Type.Literal('put'), key: keySchema, value: Type.String() }, { additionalProperties: false }),
  Type.Object({ op: Type.Literal('delete'), key: keySchema }, { additionalProperties: false }),
]);

/** A session would change more keys than one etcd transaction can hold. */
export class TooManyOperationsError extends CommitdError {
  constructor(message: string) {
    super('PAYLOAD_TOO_LARGE', message);
  }
}

/** `http(s)://host[:port]` or `host:port`, as etcd3 takes them. */
const ENDPOINT = /^(https?:\/\/(\[[0-9a-fA-F:.]+\]|[^\s/:[\]]+)(:\d+)?\/?|([^\s:/]+|\[[0-9a-fA-F:.]+\]):\d+)$/;

/** An endpoint that etcd3 cannot dial: refused at registration rather than retried forever. */
export class InvalidEtcdEndpointError extends CommitdError {
  constructor(storeName: string, endpoint: string) {
    super(
      'INVALID_REQUEST',
      `etcd store ${storeName}: options.endpoints: ${JSON.stringify(endpoint)} is not an endpoint (expected http(s)://host:port or host:port)`,
    );
  }
}

/** The store has no endpoints: none in its options, and the coordinator does not run on etcd. */
export class EtcdEndpointsMissingError extends CommitdError {
  constructor(storeName: string) {
    super('INVALID_REQUEST', `etcd store ${storeName} needs endpoints: set options.endpoints, or run commitd on etcd`);
  }
}

function markerKey(key: Uint8Array): Buffer {
  return Buffer.concat([Buffer.from(MARKER_DIR), key]);
}

/** A store's etcd client, namespace and marker leases. */
class EtcdBackend {
  readonly name: string;
  readonly #client: Etcd3;
  readonly ns: Namespace;
  readonly #retentionSeconds: number;
  readonly #timeoutMs: number;
  /** Markers share one lease per 1 % of the retention (module comment). */
  readonly #leases: LeaseBuckets;

  constructor(name: string, endpoints: readonly string[], prefix: string, retentionSeconds: number, timeoutMs: number) {
    this.name = name;
    this.#timeoutMs = timeoutMs;
    this.#client = new Etcd3({ hosts: [...endpoints] });
    this.ns = this.#client.namespace(prefix);
    this.#retentionSeconds = retentionSeconds;
    this.#leases = new LeaseBuckets((ttl, deadline) =>
      this.rpc('lease grant', (call) => this.ns.lease(Math.ceil(ttl), { autoKeepAlive: false, deadline: call.deadline }).grant(), deadline),
    );
  }

  /** The id of a lease under which a marker lives at least the retention period. */
  markerLease(): Promise<string> {
    return this.#leases.leaseFor(this.#retentionSeconds, deadlineIn(this.#timeoutMs));
  }

  /** Drops the marker leases, e.g. after etcd said it no longer knows one. */
  forgetMarkerLeases(): void {
    this.#leases.clear();
  }

  /** The ID stored in `key`'s marker, if any. */
  async readMarker(key: Uint8Array): Promise<Uint8Array | undefined> {
    const stored = await this.rpc('marker read', (call) => this.ns.get(markerKey(key)).options(call).string());
    return stored === null ? undefined : fromHex(stored);
  }

  /** Runs one call under the timeout; "etcd did not answer" becomes `StoreUnavailableError`. */
  async rpc<T>(what: string, run: (options: CallOptions) => Promise<T>, deadline: Deadline = deadlineIn(this.#timeoutMs)): Promise<T> {
    try {
      const expired = () => new StoreUnavailableError(`etcd store ${this.name}: no answer to ${what} within ${this.#timeoutMs} ms`);
      return await callEtcd(deadline, run, expired);
    } catch (err) {
      if (isEtcdUnavailable(err)) {
        throw new StoreUnavailableError(`etcd store ${this.name} is unavailable (${what}): ${err.message}`, {}, { cause: err });
      }
      throw err;
    }
  }

  close(): void {
    this.#client.close();
  }
}

/** One session's driver: keeps the last change per key, commits them in one transaction. */
class EtcdDriver implements StoreDriver<EtcdChange> {
  readonly #backend: EtcdBackend;
  /** The last change of each key, in first-change order. */
  #changes = new Map<string, EtcdChange>();

  constructor(backend: EtcdBackend) {
    this.#backend = backend;
  }

  findMarker(key: Uint8Array): Promise<Uint8Array | undefined> {
    return this.#backend.readMarker(key);
  }

  async open(): Promise<void> {
    this.#changes = new Map();
  }

  /** The changes as they were when the current request started (copied: a later change of a key replaces its entry). */
  #saved: Map<string, EtcdChange> | undefined;

  /** One request's changes start (they are only buffered until commit). */
  async savepoint(): Promise<void> {
    this.#saved = new Map(this.#changes);
  }

  /** The request failed: back to the changes before it. */
  async rollbackToSavepoint(): Promise<void> {
    if (this.#saved) this.#changes = this.#saved;
    this.#saved = undefined;
  }

  async releaseSavepoint(): Promise<void> {
    this.#saved = undefined;
  }

  async apply(change: EtcdChange): Promise<void> {
    // etcd keys are plain bytes (no `..`, no normalisation) and every op is one key under the
    // namespace (no ranges), so a key starting with the reserved prefix is the only way in.
    if (change.key.startsWith(ETCD_RESERVED_PREFIX)) {
      throw new BookkeepingError(
        'marker-key',
        `etcd store ${this.#backend.name}: ${change.op} of ${JSON.stringify(change.key)} would touch commitd's bookkeeping, ${ETCD_BOOKKEEPING}`,
      );
    }
    if (!this.#changes.has(change.key) && this.#changes.size >= ETCD_MAX_CHANGED_KEYS) {
      throw new TooManyOperationsError(
        `etcd store ${this.#backend.name}: a session may change at most ${ETCD_MAX_CHANGED_KEYS} keys, all committed in one etcd transaction; ` +
          `${JSON.stringify(change.key)} would be key ${ETCD_MAX_CHANGED_KEYS + 1}`,
      );
    }
    this.#changes.set(change.key, change);
  }

  /** Checks the marker, so a key committed by someone else skips before the commit point. */
  async prepare(key: Uint8Array): Promise<void> {
    const stored = await this.#backend.readMarker(key);
    if (stored) throw new MarkerExistsError(key, stored);
  }

  async commit(key: Uint8Array, id: Uint8Array): Promise<void> {
    try {
      await this.#commitOnce(key, id);
    } catch (err) {
      // etcd forgot the lease (its data was restored, say): take a new one, once.
      if (!isLeaseInvalid(err)) throw this.#rejection(err);
      this.#backend.forgetMarkerLeases();
      await this.#commitOnce(key, id).catch((retryErr: unknown) => Promise.reject(this.#rejection(retryErr)));
    }
    this.#changes = new Map();
  }

  async rollback(): Promise<void> {
    this.#changes = new Map();
  }

  async #commitOnce(key: Uint8Array, id: Uint8Array): Promise<void> {
    const { ns } = this.#backend;
    const marker = markerKey(key);
    const leaseId = await this.#backend.markerLease();
    // Builders are built inside the call: etcd3's builders are thenables, awaiting one sends it.
    const response = await this.#backend.rpc('commit', (call) =>
      ns
        .if(marker, 'Create', '==', 0)
        .then(
          ...[...this.#changes.values()].map((change) => (change.op === 'put' ? ns.put(change.key).value(change.value) : ns.delete().key(change.key))),
          ns.put(marker).value(toHex(id)).lease(leaseId),
        )
        .else(ns.get(marker))
        .options(call)
        .commit(),
    );
    if (response.succeeded) return;
    const stored = response.responses[0]?.response_range.kvs[0]?.value;
    if (!stored) throw new Error(`etcd store ${this.#backend.name}: the marker of ${JSON.stringify(describeKey(key))} exists but could not be read`);
    throw new MarkerExistsError(key, fromHex(stored.toString('utf8')));
  }

  /** etcd's refusals of the transaction itself, as commitd errors. */
  #rejection(err: unknown): unknown {
    const message = errorMessage(err);
    if (message.includes('too many operations in txn request')) {
      return new TooManyOperationsError(
        `etcd store ${this.#backend.name}: etcd refused the transaction (${message}); its --max-txn-ops is below ${ETCD_MAX_CHANGED_KEYS + 1}`,
      );
    }
    if (message.includes('request is too large')) {
      return new ChangeRejectedError(`etcd refused the session's transaction as too large (${message})`, { reason: 'request-too-large' });
    }
    return err;
  }
}

/** The built-in `etcd` store type, on etcd3 (the client the coordinator KV uses). */
export const etcdStoreType: StoreType<EtcdOptions, EtcdChange> = {
  type: 'etcd',
  bookkeeping: ETCD_BOOKKEEPING,
  optionsSchema,
  changeSchema,
  create(options: EtcdOptions, ctx: StoreContext): Store<EtcdChange> {
    const endpoints = options.endpoints ?? ctx.etcdEndpoints;
    if (!endpoints || endpoints.length === 0) throw new EtcdEndpointsMissingError(ctx.name);
    const malformed = endpoints.find((endpoint) => !ENDPOINT.test(endpoint));
    if (malformed !== undefined) throw new InvalidEtcdEndpointError(ctx.name, malformed);
    const backend = new EtcdBackend(ctx.name, endpoints, options.prefix, ctx.retentionSeconds, statementTimeoutMs(options.statementTimeout));
    return {
      name: ctx.name,
      type: 'etcd',
      session: () => new HelperCommittable(ctx.name, new EtcdDriver(backend)),
      probe: async () => {
        await backend.rpc('probe', (call) => backend.ns.get(MARKER_DIR).options(call).exists());
      },
      close: async () => backend.close(),
    };
  },
};

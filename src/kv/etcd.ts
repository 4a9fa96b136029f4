/**
 * The etcd backend of the KV contract, built on `etcd3` (microsoft/etcd3).
 *
 * Revisions are etcd `mod_revision`s. Every conditional write is one etcd transaction;
 * every RPC is bounded by `timeoutMs` and connection-level failures surface as
 * `UnavailableError`, never as a hang.
 * @module
 */
import {
  CompareTarget as RpcCompareTarget,
  Etcd3,
  comparator,
  compareTarget,
  type ComparatorBuilder,
  type DeleteBuilder,
  type ICompare,
  type IKeyValue,
  type IRangeResponse,
  type IRequestOp,
  type Namespace,
  type PutBuilder,
} from 'etcd3';
import type { Kv, KvEntry, KvLease, KvOp, KvWatch, KvWatchEvent, ReadOptions, WriteOptions } from './kv.ts';
import { assertDistinctKeys, assertTtl, describeTxnFailure } from './checks.ts';
import { deadlineIn, withDeadline, type Deadline } from './deadline.ts';
import { AlreadyExistsError, ConstraintViolatedError, UnavailableError, VersionMismatchError } from './errors.ts';
import { EtcdLease } from './etcd-lease.ts';
import { GroupCommit, type Settled } from './group-commit.ts';
import { RevisionFloor, orderedRead } from './etcd-ordering.ts';
import { kvRpcRunner, type CallOptions, type EtcdKvOperation, type RpcRunner } from './etcd-rpc.ts';
import { LeaseBuckets } from './lease-buckets.ts';
import { EtcdPrefixWatch } from './etcd-watch.ts';

/** Options of {@link EtcdKv}. */
export interface EtcdKvOptions {
  /** etcd client URLs, e.g. `http://127.0.0.1:2379`. */
  readonly endpoints: readonly string[];
  /** Prefix of every key this KV reads or writes (default `/commitd/`). */
  readonly namespace?: string;
  /**
   * Upper bound of every operation in milliseconds (default 5000), retries inside etcd3
   * included. A write that times out may still have been applied: the outcome is unknown.
   */
  readonly timeoutMs?: number;
  /**
   * Called once per RPC (a write that first needs a lease makes two). `ok` is false only
   * when etcd did not answer (the call failed with `UnavailableError` or an unexpected
   * error); a condition that did not hold is an answer.
   */
  readonly onOperation?: (op: EtcdKvOperation, durationMs: number, ok: boolean) => void;
  /**
   * Called when the ordering guard drops a serializable response older than a revision this
   * client already saw (the read is then repeated as a linearizable one).
   */
  readonly onStaleRead?: (op: 'get' | 'list', staleRevision: number, seenRevision: number) => void;
  /**
   * Most conditional writes that share one etcd transaction (group commit; default 64,
   * `1` sends every write on its own). Writes issued while one is in flight wait for it
   * and then leave together, each as a nested transaction with its own compares.
   */
  readonly maxGroup?: number;
  /** Called with the number of writes in every etcd transaction sent. */
  readonly onGroup?: (size: number) => void;
}

/** The default key prefix of the coordinator's records. */
export const DEFAULT_ETCD_NAMESPACE = '/commitd/';
const DEFAULT_TIMEOUT_MS = 5000;
const DEFAULT_MAX_GROUP = 64;
/** Below etcd's default `--max-request-bytes` (1.5 MiB): a group never exceeds what one write may. */
const MAX_GROUP_BYTES = 1024 * 1024;
/** Read by `ping`; it need not exist, the read only has to be answered. */
const PING_KEY = '.ping';

type CompareTarget = 'Create' | 'Mod';
type Comparator = '==' | '>';
/** One etcd compare: `target(key) cmp value`. */
type Compare = readonly [key: string, target: CompareTarget, cmp: Comparator, value: number];

/** The compares and writes of one etcd transaction, built from `KvOp`s. */
interface TxnPlan {
  readonly compares: readonly Compare[];
  readonly writes: readonly (PutBuilder | DeleteBuilder)[];
}

/** Result of a committed etcd transaction. */
interface TxnOutcome {
  readonly succeeded: boolean;
  readonly revision: number;
}

/** One conditional write waiting for its group. */
interface GroupedWrite {
  readonly op: EtcdKvOperation;
  readonly plan: TxnPlan;
  readonly deadline: Deadline;
  readonly keys: readonly string[];
  readonly bytes: number;
}

/**
 * KV backed by etcd.
 *
 * TTLs without an explicit lease share one lease per TTL bucket: a lease granted for a
 * TTL is reused by every write with that TTL during the following
 * `max(1 s, ttl / 100)` (the bucket width), and is granted for `ttl + bucket width`
 * seconds (rounded up). A value therefore lives between `ttl` and `ttl + bucket width`
 * seconds, plus etcd's expiry granularity of about half a second; etcd also raises any
 * TTL to its minimum (1.5 election timeouts rounded up to whole seconds, 2 s by default).
 * Writing a value with a TTL costs one round trip, except for the first write of each
 * bucket, which first grants the bucket's lease.
 *
 * A write attached to a lease that expired or was revoked fails with
 * `ConstraintViolatedError`: its condition (a live lease) did not hold.
 *
 * After every host failed, etcd3's per-host circuit breaker fails calls at once for 5 s
 * before it tries the host again: operations reject with `UnavailableError` meanwhile,
 * and succeed again within about 5 s after etcd is back.
 *
 * Ordering guard (as etcd's Go `clientv3/ordering`): the client remembers the highest store
 * revision in any response header it received. A serializable read is answered by whichever
 * member the call reached, from that member's local state; a member that was frozen or cut
 * off may answer from before writes this client already saw. Such a response (header
 * revision below the highest seen) is dropped and the read is repeated as a linearizable
 * one, which etcd answers at a revision at least as new as every write it acknowledged.
 * Retrying rather than failing keeps listings available while one member lags; the cost is
 * one extra round trip, only when a stale member answered.
 */
export class EtcdKv implements Kv {
  private readonly client: Etcd3;
  private readonly ns: Namespace;
  private readonly timeoutMs: number;
  /** Runs one RPC bounded by its deadline, maps its errors and reports it to `onOperation`. */
  private readonly rpc: RpcRunner;
  private readonly onStaleRead: EtcdKvOptions['onStaleRead'];
  private readonly buckets: LeaseBuckets;
  private readonly keptAlive = new Set<EtcdLease>();
  private readonly floor: RevisionFloor;
  private readonly watches = new Set<EtcdPrefixWatch>();
  private readonly group: GroupCommit<GroupedWrite, TxnOutcome>;
  private readonly prefix: Buffer;

  constructor(options: EtcdKvOptions) {
    if (options.endpoints.length === 0) throw new RangeError('EtcdKv needs at least one endpoint');
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.onStaleRead = options.onStaleRead;
    this.floor = new RevisionFloor();
    this.client = new Etcd3({ hosts: [...options.endpoints] });
    this.prefix = Buffer.from(options.namespace ?? DEFAULT_ETCD_NAMESPACE);
    this.ns = this.client.namespace(options.namespace ?? DEFAULT_ETCD_NAMESPACE);
    this.group = new GroupCommit({
      send: (writes) => this.sendGroup(writes),
      maxMembers: Math.max(1, options.maxGroup ?? DEFAULT_MAX_GROUP),
      maxBytes: MAX_GROUP_BYTES,
      maxInFlight: 1,
      onGroup: options.onGroup,
    });
    this.buckets = new LeaseBuckets((ttl, deadline) => this.grantRaw(ttl, deadline).then((lease) => lease.id));
    // A shared TTL lease that etcd no longer knows (e.g. its data was wiped) must not be reused.
    this.rpc = kvRpcRunner({ onOperation: options.onOperation, onLeaseInvalid: () => this.buckets.clear() });
  }

  /** {@inheritDoc Kv.get} A serializable read passes the ordering guard (class comment). */
  async get(key: string, options?: ReadOptions): Promise<KvEntry | undefined> {
    const response = await this.read('get', options, (serializable) => (call) => this.ns.get(key).serializable(serializable).options(call).exec());
    const [found] = response.kvs;
    return found === undefined ? undefined : toEntry(key, found);
  }

  /** {@inheritDoc Kv.list} A serializable read passes the ordering guard (class comment). */
  async list(prefix: string, options?: ReadOptions): Promise<KvEntry[]> {
    const response = await this.read(
      'list',
      options,
      (serializable) => (call) => this.ns.getAll().prefix(prefix).sort('Key', 'Ascend').serializable(serializable).options(call).exec(),
    );
    return response.kvs.map((kv) => toEntry(kv.key.toString(), kv));
  }

  /** The highest store revision this client has seen in a response (0 before the first). */
  get highestRevisionSeen(): number {
    return this.floor.highest;
  }

  /** {@inheritDoc Kv.create} */
  async create(key: string, value: string, options?: WriteOptions): Promise<number> {
    const outcome = await this.commit('create', [{ type: 'create', key, value, options }]);
    if (!outcome.succeeded) throw new AlreadyExistsError(key);
    return outcome.revision;
  }

  /**
   * {@inheritDoc Kv.update}
   * Like an etcd put, the new value keeps no TTL or lease unless `options` gives one.
   */
  async update(key: string, value: string, revision: number, options?: WriteOptions): Promise<number> {
    if (!isRevision(revision)) throw new VersionMismatchError(key, revision);
    const outcome = await this.commit('update', [{ type: 'update', key, value, revision, options }]);
    if (!outcome.succeeded) throw new VersionMismatchError(key, revision);
    return outcome.revision;
  }

  /** {@inheritDoc Kv.delete} */
  async delete(key: string, revision: number): Promise<void> {
    if (!isRevision(revision)) throw new VersionMismatchError(key, revision);
    const outcome = await this.commit('delete', [{ type: 'delete', key, revision }]);
    if (!outcome.succeeded) throw new VersionMismatchError(key, revision);
  }

  /**
   * {@inheritDoc Kv.txn}
   * All ops become one etcd transaction. Each key may appear once (`TypeError` otherwise);
   * an update or delete at a revision that cannot exist fails like any other condition.
   * Every etcd write is durable on a quorum, so `TxnOptions.lazySync` changes nothing.
   */
  async txn(ops: readonly KvOp[]): Promise<number> {
    assertDistinctKeys(ops);
    if (ops.length === 0) return this.currentRevision();
    if (ops.some((op) => (op.type === 'update' || op.type === 'delete') && !isRevision(op.revision))) {
      throw new ConstraintViolatedError(describeTxnFailure(ops));
    }
    const outcome = await this.commit('txn', ops);
    if (!outcome.succeeded) throw new ConstraintViolatedError(describeTxnFailure(ops));
    return outcome.revision;
  }

  /** {@inheritDoc Kv.watch} See `etcd-watch.ts`. */
  watch(prefix: string, onEvent: (event: KvWatchEvent) => void, onError?: (err: Error) => void): KvWatch {
    const source = {
      listAt: async (watched: string) => {
        const response = await this.read('list', undefined, () => (call) => this.ns.getAll().prefix(watched).sort('Key', 'Ascend').options(call).exec());
        return { entries: response.kvs.map((kv) => toEntry(kv.key.toString(), kv)), revision: Number(response.header.revision) };
      },
      watcher: (watched: string, fromRevision: number) => this.ns.watch().prefix(watched).startRevision(String(fromRevision)).create(),
    };
    const watch = new EtcdPrefixWatch(source, prefix, onEvent, onError);
    this.watches.add(watch);
    return {
      close: () => {
        this.watches.delete(watch);
        watch.close();
      },
    };
  }

  /** {@inheritDoc Kv.grantLease} */
  async grantLease(ttlSeconds: number): Promise<KvLease> {
    return this.grantRaw(ttlSeconds, this.deadline());
  }

  /** {@inheritDoc Kv.ping} */
  async ping(): Promise<void> {
    await this.rpc('ping', this.deadline(), (call) => this.ns.get(PING_KEY).options(call).exists());
  }

  /** {@inheritDoc Kv.close} Stops the keep-alive of every lease; their keys expire by TTL. */
  async close(): Promise<void> {
    for (const lease of this.keptAlive) lease.release();
    this.keptAlive.clear();
    for (const watch of this.watches) watch.close();
    this.watches.clear();
    this.client.close();
  }

  private deadline(): Deadline {
    return deadlineIn(this.timeoutMs);
  }

  /** One range read under one deadline, through the ordering guard when serializable. */
  private read(
    op: 'get' | 'list',
    options: ReadOptions | undefined,
    request: (serializable: boolean) => (call: CallOptions) => Promise<IRangeResponse>,
  ): Promise<IRangeResponse> {
    const deadline = this.deadline();
    const linearizable = () => this.rpc(op, deadline, request(false));
    if (!isSerializable(options)) return this.floor.observed(linearizable());
    return orderedRead(
      this.floor,
      () => this.rpc(op, deadline, request(true)),
      linearizable,
      (stale, seen) => this.onStaleRead?.(op, stale, seen),
    );
  }

  /** Builds the etcd transaction for `ops` under one deadline and commits it with the next group. */
  private async commit(op: EtcdKvOperation, ops: readonly KvOp[]): Promise<TxnOutcome> {
    const deadline = this.deadline();
    const plan = await this.plan(ops, deadline);
    let bytes = 0;
    for (const write of ops) bytes += write.key.length + (write.type === 'create' || write.type === 'update' ? write.value.length : 0);
    return this.group.submit({ op, plan, deadline, keys: ops.map((write) => write.key), bytes });
  }

  /** One write as its own etcd transaction. */
  private async sendAlone(write: GroupedWrite): Promise<TxnOutcome> {
    const response = await this.floor.observed(this.rpc(write.op, write.deadline, (call) => toComparatorBuilder(this.ns, write.plan).options(call).commit()));
    return { succeeded: response.succeeded, revision: Number(response.header.revision) };
  }

  /**
   * A group as one etcd transaction without compares of its own, each write a nested
   * transaction (etcd ≥ 3.3) with its compares: etcd evaluates every nested compare against
   * the state before the transaction and applies the writes of those that hold, so a write
   * whose condition fails fails alone. The group's keys are distinct (`GroupCommit`), so no
   * write's compare depends on another's put. If etcd refuses the group as a whole (a lease
   * it no longer knows, a limit), each write is sent alone and gets its own answer; a group
   * that got no answer (`UnavailableError`) fails every write with that error, as each would
   * have alone: its outcome is unknown.
   */
  private async sendGroup(writes: readonly GroupedWrite[]): Promise<readonly Settled<TxnOutcome>[]> {
    const [only] = writes;
    if (only !== undefined && writes.length === 1) return [await settle(this.sendAlone(only))];
    const deadline = writes.reduce((earliest, write) => (write.deadline.at < earliest.deadline.at ? write : earliest)).deadline;
    try {
      const response = await this.floor.observed(
        this.rpc('txn', deadline, async (call) => {
          const success = await Promise.all(writes.map((write) => this.nestedTxn(write.plan)));
          return this.ns.kv.txn({ compare: [], success, failure: [] }, call);
        }),
      );
      const revision = Number(response.header.revision);
      return writes.map((_, index) => ({ ok: true, value: { succeeded: response.responses[index]?.response_txn?.succeeded === true, revision } }));
    } catch (error) {
      if (error instanceof UnavailableError) throw error;
      return Promise.all(writes.map((write) => settle(this.sendAlone(write))));
    }
  }

  /** `plan` as a nested transaction: namespaced compares and the writes' request ops. */
  private async nestedTxn(plan: TxnPlan): Promise<IRequestOp> {
    const compare = plan.compares.map(
      ([key, target, cmp, value]): ICompare => ({
        key: Buffer.concat([this.prefix, Buffer.from(key)]),
        result: comparator[cmp],
        target: RpcCompareTarget[target],
        [compareTarget[target]]: value,
      }),
    );
    const success = await Promise.all(plan.writes.map((write) => write.op()));
    return { request_txn: { compare, success, failure: [] } };
  }

  /** Maps `ops` to compares and writes; waits for the TTL leases the writes need. */
  private async plan(ops: readonly KvOp[], deadline: Deadline): Promise<TxnPlan> {
    const compares = ops.flatMap(comparesOf);
    const leaseIds = await Promise.all(ops.map((op) => (op.type === 'create' || op.type === 'update' ? this.leaseIdFor(op.options, deadline) : '0')));
    const writes = ops.flatMap((op, index) => this.writesOf(op, leaseIds[index] ?? '0'));
    return { compares, writes };
  }

  /**
   * The put or delete of `op` (none for a check). Built only once the lease id is known,
   * and never returned from an async function: etcd3's builders are thenables, and
   * awaiting one sends it.
   */
  private writesOf(op: KvOp, leaseId: string): (PutBuilder | DeleteBuilder)[] {
    switch (op.type) {
      case 'create':
      case 'update':
        return [this.ns.put(op.key).value(op.value).lease(leaseId)];
      case 'delete':
        return [this.ns.delete().key(op.key)];
      case 'check':
        return [];
    }
  }

  /** The lease a write attaches to: its own lease, a shared TTL bucket, or none (`0`). */
  private async leaseIdFor(options: WriteOptions | undefined, deadline: Deadline): Promise<string> {
    if (options?.lease !== undefined) {
      if (!(options.lease instanceof EtcdLease)) throw new TypeError('EtcdKv accepts only leases it granted');
      return options.lease.id;
    }
    if (options?.ttlSeconds === undefined) return '0';
    assertTtl(options.ttlSeconds);
    const leaseId = this.buckets.leaseFor(options.ttlSeconds, deadline);
    return withDeadline(leaseId, deadline.signal, () => new UnavailableError('etcd did not answer lease grant in time'));
  }

  private async currentRevision(): Promise<number> {
    const response = await this.floor.observed(this.rpc('txn', this.deadline(), (call) => this.ns.get(PING_KEY).options(call).exec()));
    return Number(response.header.revision);
  }

  /** Grants an etcd lease of `ttlSeconds` (rounded up) without keeping it alive. */
  private async grantRaw(ttlSeconds: number, deadline: Deadline): Promise<EtcdLease> {
    assertTtl(ttlSeconds);
    const ttl = Math.ceil(ttlSeconds);
    const sentAt = performance.now();
    const lease = this.ns.lease(ttl, { autoKeepAlive: false, deadline: deadline.at });
    const id = await this.rpc('lease', deadline, () => lease.grant());
    return new EtcdLease(id, ttl, sentAt, lease, { rpc: this.rpc, timeoutMs: this.timeoutMs, keptAlive: this.keptAlive });
  }
}

/** The etcd compares that make `op`'s condition. */
function comparesOf(op: KvOp): Compare[] {
  switch (op.type) {
    case 'create':
      return [[op.key, 'Create', '==', 0]];
    case 'update':
    case 'delete':
      return [[op.key, 'Mod', '==', op.revision]];
    case 'check':
      return comparesOfCheck(op);
  }
}

function comparesOfCheck(op: Extract<KvOp, { type: 'check' }>): Compare[] {
  if (!op.exists) {
    if (op.revision !== undefined) throw new TypeError(`check of ${JSON.stringify(op.key)}: a revision needs exists: true`);
    return [[op.key, 'Create', '==', 0]];
  }
  if (op.revision === undefined) return [[op.key, 'Create', '>', 0]];
  return [
    [op.key, 'Create', '>', 0],
    [op.key, 'Mod', '==', op.revision],
  ];
}

function toComparatorBuilder(ns: Namespace, plan: TxnPlan): ComparatorBuilder {
  const [first, ...rest] = plan.compares;
  if (first === undefined) throw new Error('a transaction needs at least one compare');
  const builder = ns.if(...first);
  for (const compare of rest) builder.and(...compare);
  return builder.then(...plan.writes);
}

function settle<T>(promise: Promise<T>): Promise<Settled<T>> {
  return promise.then(
    (value) => ({ ok: true, value }),
    (error: unknown) => ({ ok: false, error }),
  );
}

/** Revisions that a stored value can have: etcd's start at 1. */
function isRevision(revision: number): boolean {
  return Number.isSafeInteger(revision) && revision >= 1;
}

function isSerializable(options: ReadOptions | undefined): boolean {
  return options?.consistency === 'serializable';
}

function toEntry(key: string, kv: IKeyValue): KvEntry {
  return { key, value: kv.value.toString(), revision: Number(kv.mod_revision) };
}

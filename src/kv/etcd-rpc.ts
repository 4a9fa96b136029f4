/**
 * Calls to etcd through etcd3, for every etcd client in commitd: each call carries its
 * absolute gRPC deadline and is raced against the same deadline, because etcd3's retries
 * and circuit breaker can outlast the gRPC deadline. Also the KV backend's runner, which
 * maps failures to the KV's errors and reports every call.
 * @module
 */
import { CommitdError } from '../errors/core.ts';
import { withDeadline, type Deadline } from './deadline.ts';
import { isLeaseInvalid, toKvError } from './etcd-errors.ts';
import { UnavailableError } from './errors.ts';

/** gRPC call options: only the absolute deadline is used. */
export interface CallOptions {
  readonly deadline: Date;
}

/** Names passed to `onOperation`, one per RPC. */
export type EtcdKvOperation = 'get' | 'list' | 'create' | 'update' | 'delete' | 'txn' | 'lease' | 'ping';

/** Runs one RPC under the operation's deadline and reports it. */
export type RpcRunner = <T>(op: EtcdKvOperation, deadline: Deadline, run: (options: CallOptions) => Promise<T>) => Promise<T>;

/** Sends `run` with `deadline` as its gRPC deadline; rejects with `expired()` at the deadline. */
export function callEtcd<T>(deadline: Deadline, run: (options: CallOptions) => Promise<T>, expired: () => Error): Promise<T> {
  return withDeadline(run({ deadline: deadline.at }), deadline.signal, expired);
}

/** What the KV's runner reports to. */
export interface KvRpcHooks {
  /** See `EtcdKvOptions.onOperation`. */
  readonly onOperation?: (op: EtcdKvOperation, durationMs: number, ok: boolean) => void;
  /** etcd no longer knows a lease a call used (e.g. its data was wiped). */
  readonly onLeaseInvalid: () => void;
}

/** The KV backend's runner: bounds each RPC by its deadline, maps its errors, reports it. */
export function kvRpcRunner(hooks: KvRpcHooks): RpcRunner {
  return async (op, deadline, run) => {
    const startedAt = performance.now();
    let answered = false;
    try {
      const result = await callEtcd(deadline, run, () => new UnavailableError(`etcd did not answer ${op} in time`));
      answered = true;
      return result;
    } catch (error) {
      if (isLeaseInvalid(error)) hooks.onLeaseInvalid();
      const mapped = toKvError(error);
      answered = mapped instanceof CommitdError && !(mapped instanceof UnavailableError);
      throw mapped;
    } finally {
      hooks.onOperation?.(op, performance.now() - startedAt, answered);
    }
  };
}

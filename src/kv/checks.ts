/**
 * Argument checks both KV backends share, so they refuse the same inputs the same way.
 * @module
 */
import type { KvOp } from './kv.ts';

/** Rejects a transaction that names a key twice, which etcd would refuse or misapply. */
export function assertDistinctKeys(ops: readonly KvOp[]): void {
  const seen = new Set<string>();
  for (const op of ops) {
    if (seen.has(op.key)) throw new TypeError(`duplicate key in transaction: ${JSON.stringify(op.key)}`);
    seen.add(op.key);
  }
}

/** The message of a transaction whose conditions did not hold. */
export function describeTxnFailure(ops: readonly KvOp[]): string {
  const keys = ops.map((op) => JSON.stringify(op.key)).join(', ');
  return `transaction constraint violated on keys ${keys}: nothing was applied`;
}

/** Rejects a TTL that is not a positive number of seconds. */
export function assertTtl(ttlSeconds: number): void {
  if (!Number.isFinite(ttlSeconds) || ttlSeconds <= 0) throw new RangeError(`TTL must be a positive number of seconds, got ${ttlSeconds}`);
}

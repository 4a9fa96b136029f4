/**
 * The core of commitd: Committable, MultiCommitter, errors, session-ID hashing and the KV
 * contract with its two backends. Knows nothing of HTTP or specific datastores.
 * @module
 */
export type { Committable, CommitterLogger } from './committable.ts';
export { silentLogger } from './committable.ts';
export * from '../errors/core.ts';
export * from '../kv/errors.ts';
export type { Kv, KvEntry, KvLease, KvOp, ReadConsistency, ReadOptions, WriteOptions } from '../kv/kv.ts';
export { describeKey, fromHex, keyBytes, sameKey, toHex, type IdempotencyKey } from './keys.ts';
export { MultiCommitter, compareNames, type MultiCommitterOptions } from './multi-committer.ts';
export {
  ChangeHasher,
  NotCanonicalizableError,
  SessionHasher,
  canonicalJson,
  canonicalLine,
  ID_BYTES,
  sessionId,
  sessionIdOfChanges,
  storeId,
  storeIdOfLines,
} from './session-id.ts';
export { KvSlot, isSlot, type CommitResult, type SessionSlot } from './slot.ts';

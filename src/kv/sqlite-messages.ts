/**
 * The messages between the embedded KV's event-loop side (`sqlite-thread.ts`) and its
 * thread (`sqlite-worker.ts`), and the KV errors carried across — rebuilt as the same
 * classes, so callers branch on them as they would on the KV in the process.
 * @module
 */
import type { KvWatchEvent } from './kv.ts';
import { AlreadyExistsError, ConstraintViolatedError, UnavailableError, VersionMismatchError } from './errors.ts';

/** A write's expiry as it crosses: the lease by id (a lease object holds functions). */
export interface WireWriteOptions {
  readonly ttlSeconds?: number;
  readonly leaseId?: string;
}

export type WireOp =
  | { readonly type: 'create'; readonly key: string; readonly value: string; readonly options?: WireWriteOptions }
  | { readonly type: 'update'; readonly key: string; readonly value: string; readonly revision: number; readonly options?: WireWriteOptions }
  | { readonly type: 'delete'; readonly key: string; readonly revision: number }
  | { readonly type: 'check'; readonly key: string; readonly exists: boolean; readonly revision?: number };

/** One call (`id` 0 is reserved for the thread's start-up). */
export type KvCall = { readonly id: number } & (
  | { readonly method: 'get'; readonly args: [string] }
  | { readonly method: 'list'; readonly args: [string] }
  | { readonly method: 'create'; readonly args: [string, string, WireWriteOptions | undefined] }
  | { readonly method: 'update'; readonly args: [string, string, number, WireWriteOptions | undefined] }
  | { readonly method: 'delete'; readonly args: [string, number] }
  | { readonly method: 'txn'; readonly args: [WireOp[]] }
  | { readonly method: 'grantLease'; readonly args: [number] }
  | { readonly method: 'renewLease'; readonly args: [string, number] }
  | { readonly method: 'revokeLease'; readonly args: [string] }
  | { readonly method: 'watch'; readonly args: [number, string] }
  | { readonly method: 'unwatch'; readonly args: [number, string] }
  | { readonly method: 'ping'; readonly args: [] }
  | { readonly method: 'close'; readonly args: [] }
);

export type KvCallMethod = KvCall['method'];

/** What the thread sends: the answer to call `id`, or an event of watch `watch`. */
export type KvMessage =
  | { readonly id: number; readonly value?: unknown; readonly error?: WireError }
  | { readonly watch: number; readonly event?: KvWatchEvent; readonly error?: WireError };

export interface WireError {
  readonly name: string;
  readonly message: string;
}

export function serializeKvError(err: unknown): WireError {
  if (!(err instanceof Error)) return { name: 'Error', message: String(err) };
  return { name: err.name, message: err.message };
}

/** The error as the KV threw it: the contract's classes, `TypeError` for a misuse. */
export function reviveKvError(error: WireError): Error {
  let revived: Error;
  switch (error.name) {
    case 'AlreadyExistsError':
      revived = new AlreadyExistsError('');
      break;
    case 'VersionMismatchError':
      revived = new VersionMismatchError('', 0);
      break;
    case 'ConstraintViolatedError':
      revived = new ConstraintViolatedError();
      break;
    case 'UnavailableError':
      revived = new UnavailableError('');
      break;
    case 'TypeError':
      revived = new TypeError('');
      break;
    default:
      revived = new Error('');
      revived.name = error.name;
  }
  revived.message = error.message;
  return revived;
}

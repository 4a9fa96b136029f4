/**
 * The messages between a `sqlite` store's event-loop side (`thread.ts`) and its thread
 * (`worker.ts`): a driver call, its reply, and the store errors carried across — rebuilt
 * as the same classes, so the committable helper and the coordinator see what a driver on
 * the event loop would have thrown.
 * @module
 */
import { BookkeepingError, ChangeRejectedError, MarkerExistsError, StatementTimeoutError, StoreUnavailableError } from '../errors.ts';
import type { SqliteChange } from './statements.ts';

/**
 * One call of a session's driver (`session` numbers the sessions of one store). Without
 * `id` it wants no answer (`decide`): the session's next call runs after it and fails with
 * its error.
 */
export type DriverCall = { readonly id?: number; readonly session: number } & (
  | { readonly method: 'findMarker'; readonly args: [Uint8Array] }
  | { readonly method: 'open'; readonly args: [] }
  | { readonly method: 'apply'; readonly args: [SqliteChange] }
  | { readonly method: 'openAndPrepare'; readonly args: [Uint8Array, readonly SqliteChange[], Uint8Array] }
  | { readonly method: 'prepare' | 'commit'; readonly args: [Uint8Array, Uint8Array] }
  | { readonly method: 'decide' | 'rollback' | 'close' | 'savepoint' | 'rollbackToSavepoint' | 'releaseSavepoint'; readonly args: [] }
);

/** The answer to call `id` (0: the thread's start-up). */
export type DriverReply = { readonly id: number; readonly value?: unknown; readonly error?: SerializedError };

export interface SerializedError {
  readonly name: string;
  readonly message: string;
  readonly detail?: Readonly<Record<string, unknown>>;
  readonly rule?: string;
  readonly storedId?: Uint8Array;
}

export function serializeError(err: unknown): SerializedError {
  if (!(err instanceof Error)) return { name: 'Error', message: String(err) };
  const fields = err as Error & Partial<SerializedError>;
  return {
    name: err.name,
    message: err.message,
    ...(fields.detail ? { detail: { ...fields.detail } } : {}),
    ...(fields.rule ? { rule: fields.rule } : {}),
    ...(fields.storedId ? { storedId: fields.storedId } : {}),
  };
}

/** The error as the driver threw it, as far as callers branch on it. */
export function reviveError(error: SerializedError): Error {
  const detail = error.detail ?? {};
  let revived: Error;
  switch (error.name) {
    case 'StatementTimeoutError':
      revived = new StatementTimeoutError(Number(detail.timeoutMs), detail);
      break;
    case 'ChangeRejectedError':
      revived = new ChangeRejectedError(error.message, detail);
      break;
    case 'BookkeepingError':
      revived = new BookkeepingError(error.rule ?? 'unknown', error.message.replace(/ \(rule [^)]*\)$/, ''));
      break;
    case 'StoreUnavailableError':
      revived = new StoreUnavailableError(error.message, detail);
      break;
    case 'MarkerExistsError':
      revived = new MarkerExistsError(new Uint8Array(), error.storedId ?? new Uint8Array());
      revived.message = error.message;
      break;
    default:
      revived = new Error(error.message);
      revived.name = error.name;
  }
  return revived;
}

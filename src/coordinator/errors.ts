/**
 * Errors the coordinator raises; each `code` maps to one HTTP problem in `src/http/`.
 * @module
 */
import { CommitdError, errorMessage, type ErrorCode } from '../errors/catalogue.ts';
import { SessionSpoiledError } from '../stores/errors.ts';

/** The request names an unknown store, or a change outside its store type's schema. */
export class InvalidRequestError extends CommitdError {
  constructor(message: string) {
    super('INVALID_REQUEST', message);
  }
}

/** What a one-shot whose every change list is empty answers (DESIGN "The boundary" 6). */
export const NOTHING_TO_COMMIT = 'every change list is empty: a session that changes nothing is refused (the key is not used up)';

/** No store of that name is configured. */
export class StoreNotFoundError extends CommitdError {
  constructor(name: string) {
    super('NOT_FOUND', `there is no store named ${JSON.stringify(name)}`);
  }
}

/** No such session: never begun, cancelled, or expired. */
export class SessionNotFoundError extends CommitdError {
  constructor(key: string) {
    super('NOT_FOUND', `no session under key ${JSON.stringify(key)}`);
  }
}

/** The key is held by a live session (this instance or another one). */
export class SessionBusyError extends CommitdError {
  readonly owner: string;

  constructor(key: string, owner: string, why: string) {
    super('SESSION_BUSY', `key ${JSON.stringify(key)} is held by instance ${owner}: ${why}`);
    this.owner = owner;
  }
}

/**
 * The session is `failed`: a store rejected its roll-forward and it awaits an operator. A
 * conflict (409 store_conflict) whose message carries what the store said; it names no store
 * of its own, since the rejection may have come from any of the session's.
 */
export class SessionFailedError extends CommitdError {
  constructor(key: string, error: string) {
    super('STORE_CONFLICT', `session ${JSON.stringify(key)} failed and awaits an operator (retry or abandon): ${error}`);
  }
}

/** A store rejected a change; `store` names it and `detail` carries what it said. */
export class StoreConflictError extends CommitdError {
  readonly store: string;
  readonly detail: Readonly<Record<string, unknown>>;

  constructor(store: string, message: string, detail: Readonly<Record<string, unknown>> = {}, options?: { cause?: unknown }) {
    super('STORE_CONFLICT', `store ${JSON.stringify(store)} rejected the change: ${message}`, options);
    this.store = store;
    this.detail = detail;
  }
}

/** The key was used before with other stores or other changes. */
export class KeyReusedError extends CommitdError {
  constructor(key: string, why: string) {
    super('KEY_REUSED', `key ${JSON.stringify(key)} was already used ${why}`);
  }
}

/** A session's change log would exceed the configured limit. */
export class PayloadTooLargeError extends CommitdError {
  constructor(message: string) {
    super('PAYLOAD_TOO_LARGE', message);
  }
}

/** Try again later: the KV is unreachable, or too many sessions are open. */
export class ServiceUnavailableError extends CommitdError {
  /** Seconds the caller should wait before retrying. */
  readonly retryAfterSeconds: number;

  constructor(message: string, retryAfterSeconds = 1, options?: { cause?: unknown }) {
    super('UNAVAILABLE', message, options);
    this.retryAfterSeconds = retryAfterSeconds;
  }
}

/**
 * This instance's lease is not certainly held: no session opens here until it has registered
 * again (a record written now could be taken for a dead instance's at once).
 */
export class LeaseLostError extends ServiceUnavailableError {
  constructor() {
    super('this instance lost its lease and is registering again', 1);
  }
}

/** Codes a store step may raise that already mean what the caller should see. */
const PASSED_THROUGH: ReadonlySet<ErrorCode> = new Set([
  'INVALID_REQUEST',
  'BOOKKEEPING_REFUSED',
  'PAYLOAD_TOO_LARGE',
  'UNAVAILABLE',
  'SESSION_BUSY',
  'ALREADY_COMMITTED',
  'FAILPOINT',
]);

/**
 * Turns an error from a store step into what the caller should see: a rejected change is a
 * conflict, input errors stay as they are, anything else (connection lost, disk) is a
 * passing failure worth a retry.
 */
export function storeError(store: string, err: unknown): Error {
  // The caller answers for what spoiled the session, not for the spoiling.
  if (err instanceof SessionSpoiledError) return storeError(store, err.cause);
  if (err instanceof CommitdError) {
    if (err.code === 'CHANGE_REJECTED' || err.code === 'MARKER_CONFLICT') {
      const detail = 'detail' in err && typeof err.detail === 'object' && err.detail !== null ? (err.detail as Record<string, unknown>) : {};
      return new StoreConflictError(store, err.message, detail, { cause: err });
    }
    if (err.code === 'NOT_CANONICALIZABLE') return new InvalidRequestError(`store ${JSON.stringify(store)}: ${err.message}`);
    if (PASSED_THROUGH.has(err.code)) return err;
  }
  const message = errorMessage(err);
  return new ServiceUnavailableError(`store ${JSON.stringify(store)} failed: ${message}`, 1, { cause: err });
}

const REJECTIONS: ReadonlySet<ErrorCode> = new Set(['STORE_CONFLICT', 'INVALID_REQUEST', 'BOOKKEEPING_REFUSED', 'PAYLOAD_TOO_LARGE']);

/** True for errors that mean a store will never take these changes (roll-forward must stop). */
export function isRejection(err: unknown): boolean {
  return err instanceof CommitdError && REJECTIONS.has(err.code);
}

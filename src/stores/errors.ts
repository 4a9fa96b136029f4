/**
 * The errors a store type raises, shared by every type (built in or plugin): a change the
 * store refuses, a store that cannot be reached for now, and the marker outcomes the
 * committable helper turns into exactly-once commits and skips.
 * @module
 */
import { CommitdError } from '../errors/catalogue.ts';
import { describeKey, toHex } from '../core/keys.ts';

/** A change the store rejected (bad statement, constraint, wrong shape): `409 store_conflict`. */
export class ChangeRejectedError extends CommitdError {
  /** Datastore-specific detail for callers, e.g. a SQLSTATE. */
  readonly detail: Readonly<Record<string, unknown>>;

  constructor(message: string, detail: Readonly<Record<string, unknown>> = {}, options?: { cause?: unknown }) {
    super('CHANGE_REJECTED', message, options);
    this.detail = detail;
  }
}

/**
 * The store cannot be reached, did not answer in time, or lost the connection a session
 * held: a passing condition, `503` with `Retry-After`.
 */
export class StoreUnavailableError extends CommitdError {
  /** Datastore-specific detail for logs, e.g. `{sqlstate: '25P03'}`. */
  readonly detail: Readonly<Record<string, unknown>>;
  /** Seconds a caller should wait before retrying. */
  readonly retryAfterSeconds = 1;
  /**
   * The session's own connection is gone, and the server discarded everything it held for
   * the session (an open transaction): nothing of it can have committed. A driver with
   * `reopen` sets it so that the committable helper opens the session again and re-applies
   * its changes. Never set where the loss may have left work behind (PostgreSQL: once
   * `PREPARE TRANSACTION` was sent).
   */
  readonly connectionLost: boolean;

  constructor(message: string, detail: Readonly<Record<string, unknown>> = {}, options?: { cause?: unknown; connectionLost?: boolean }) {
    super('UNAVAILABLE', message, options);
    this.detail = detail;
    this.connectionLost = options?.connectionLost ?? false;
  }
}

/** True for a {@link StoreUnavailableError} that says the session's connection was lost (see `connectionLost`). */
export function isConnectionLost(err: unknown): boolean {
  return err instanceof StoreUnavailableError && err.connectionLost;
}

/**
 * Thrown by `StoreSession.applyAll` when a request's changes failed and the store could not
 * return to where the session was before them: the session cannot go on and is cancelled.
 * `cause` is what the caller answers for.
 */
export class SessionSpoiledError extends Error {
  constructor(storeName: string, cause: unknown) {
    super(`store ${storeName} could not undo a failed request; the session cannot go on`, { cause });
  }
}

/**
 * A rejected change, named by its index: `changes[i]` in the message and `change: i` in the
 * detail (the problem's member), counted the same way, from 0. A rejection that names its
 * change already (sqlite at prepare counts the session's changes) is left as it is.
 */
export function atChange(err: unknown, index: number): unknown {
  if (!(err instanceof ChangeRejectedError) || err.detail.change !== undefined) return err;
  const named = new ChangeRejectedError(`changes[${index}]: ${err.message}`, { ...err.detail, change: index }, { cause: err });
  return named;
}

/** Thrown by a driver when the marker for the key is already there (another committer won). */
export class MarkerExistsError extends CommitdError {
  /** The ID stored in the marker. */
  readonly storedId: Uint8Array;

  constructor(key: Uint8Array, storedId: Uint8Array) {
    super('MARKER_EXISTS', `a session under key ${JSON.stringify(describeKey(key))} is already committed here`);
    this.storedId = storedId;
  }
}

/** The marker holds another ID: the same key was committed with other changes. */
export class MarkerConflictError extends CommitdError {
  constructor(storeName: string, key: Uint8Array, storedId: Uint8Array, ownId: Uint8Array) {
    super('MARKER_CONFLICT', `${storeName} already committed key ${JSON.stringify(describeKey(key))} as ${toHex(storedId)}, not ${toHex(ownId)}`);
  }
}

/**
 * A change that would read or write the store's bookkeeping (its markers, commitd's own
 * tables or keys), or lift a limit commitd sets: `400 invalid_request`, naming the rule.
 * Nothing of the change is applied.
 */
export class BookkeepingError extends CommitdError {
  /** The rule the change broke, e.g. `marker-table`, `marker-key`, `statement-limit`. */
  readonly rule: string;
  readonly detail: Readonly<Record<string, unknown>>;

  constructor(rule: string, message: string) {
    super('BOOKKEEPING_REFUSED', `${message} (rule ${rule})`);
    this.rule = rule;
    this.detail = { rule };
  }
}

/** A statement ran past its store's time limit and was aborted: `409 store_conflict`, `storeCode: STATEMENT_TIMEOUT`. */
export class StatementTimeoutError extends ChangeRejectedError {
  constructor(timeoutMs: number, extra: Readonly<Record<string, unknown>> = {}, options?: { cause?: unknown }) {
    super(`the statement ran past the store's limit of ${timeoutMs} ms and was aborted`, { ...extra, code: 'STATEMENT_TIMEOUT', timeoutMs }, options);
  }
}

/**
 * A change the store cannot run inside a session for a reason other than bookkeeping — it
 * would commit or end the session's transaction half-way (mysql: DDL commits implicitly):
 * `400 invalid_request`, naming the rule (`implicit-commit`, `transaction-control`).
 * Nothing of the change is applied.
 */
export class StatementRefusedError extends CommitdError {
  readonly rule: string;
  readonly detail: Readonly<Record<string, unknown>>;

  constructor(rule: string, message: string) {
    super('INVALID_REQUEST', `${message} (rule ${rule})`);
    this.rule = rule;
    this.detail = { rule };
  }
}

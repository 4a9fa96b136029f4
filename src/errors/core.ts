/**
 * Error classes of the core. Callers branch on the stable `code`, never on messages.
 * @module
 */
import { CommitdError } from './catalogue.ts';

export { CommitdError, errorMessage } from './catalogue.ts';

/** `begin` was called while a session is already open on this committer. */
export class InSessionError extends CommitdError {
  constructor(message = 'a session is already open') {
    super('IN_SESSION', message);
  }
}

/** `commit` (or an apply) was called while no session is open. */
export class NotInSessionError extends CommitdError {
  constructor(message = 'no session is open') {
    super('NOT_IN_SESSION', message);
  }
}

/** The key in the slot differs from the key the caller gave; names both. */
export class IdempotencyKeyMismatchError extends CommitdError {
  readonly expected: string;
  readonly actual: string;

  constructor(expected: string, actual: string, context = '') {
    super(
      'IDEMPOTENCY_KEY_MISMATCH',
      `idempotency key mismatch${context ? ` ${context}` : ''}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`,
    );
    this.expected = expected;
    this.actual = actual;
  }
}

/** A committable name was registered twice. */
export class AlreadyRegisteredError extends CommitdError {
  constructor(name: string) {
    super('ALREADY_REGISTERED', `a committable named ${JSON.stringify(name)} is already registered`);
  }
}

/** `begin` with a key that the store has already committed (its marker is there). */
export class AlreadyCommittedError extends CommitdError {
  constructor(key: string, storeName = 'store') {
    super('ALREADY_COMMITTED', `${storeName} already committed a session under key ${JSON.stringify(key)}`);
  }
}

/** A change was applied while the committable is not writable (no session begun). */
export class NotWritableError extends CommitdError {
  constructor(message = 'the committable is not in a session: call begin first') {
    super('NOT_WRITABLE', message);
  }
}

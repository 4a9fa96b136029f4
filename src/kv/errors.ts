/**
 * Typed errors of the KV contract, shared by every backend.
 * @module
 */
import { CommitdError } from '../errors/core.ts';

/** `create` found the key already present. */
export class AlreadyExistsError extends CommitdError {
  constructor(key: string) {
    super('ALREADY_EXISTS', `key ${JSON.stringify(key)} already exists`);
  }
}

/** `update`/`delete` found a revision other than the one given (or no value at all). */
export class VersionMismatchError extends CommitdError {
  constructor(key: string, expected: number) {
    super('VERSION_MISMATCH', `key ${JSON.stringify(key)} is not at revision ${expected}`);
  }
}

/** A transaction's conditions did not hold; nothing was applied. */
export class ConstraintViolatedError extends CommitdError {
  constructor(message = 'transaction constraint violated: nothing was applied') {
    super('CONSTRAINT_VIOLATED', message);
  }
}

/** The KV could not be reached within the configured timeout. Retry later. */
export class UnavailableError extends CommitdError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('UNAVAILABLE', message, options);
  }
}

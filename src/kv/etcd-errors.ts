/**
 * What etcd3's errors mean, for every etcd client in commitd: the KV backend and the
 * `etcd` store type map these to their own error classes.
 * @module
 */
import { ClientClosedError, EtcdLeaseInvalidError, isRecoverableError } from 'etcd3';
import { CommitdError } from '../errors/core.ts';
import { ConstraintViolatedError, UnavailableError } from './errors.ts';

/**
 * True when `error` means "etcd did not answer": a gRPC unavailable, deadline exceeded,
 * cancelled, internal, aborted or resource exhausted error, an open circuit breaker, or a
 * closed client. The call may or may not have been applied.
 */
export function isEtcdUnavailable(error: unknown): error is Error {
  return error instanceof Error && (isRecoverableError(error) || isBrokenCircuit(error) || error instanceof ClientClosedError);
}

/** True when etcd answered that a lease is unknown: it expired, was revoked or was wiped. */
export function isLeaseInvalid(error: unknown): boolean {
  return error instanceof EtcdLeaseInvalidError;
}

/**
 * Maps etcd3's errors to the KV contract: "etcd did not answer" ({@link isEtcdUnavailable})
 * becomes `UnavailableError`; a write to an expired or revoked lease becomes
 * `ConstraintViolatedError`. Anything else is a bug and passes through unchanged.
 */
export function toKvError(error: unknown): unknown {
  if (error instanceof CommitdError || !(error instanceof Error)) return error;
  if (isLeaseInvalid(error)) {
    return new ConstraintViolatedError(`the lease of the write expired or was revoked: ${error.message}`);
  }
  if (isEtcdUnavailable(error)) return new UnavailableError(`etcd unavailable: ${error.message}`, { cause: error });
  return error;
}

/**
 * cockatiel's `BrokenCircuitError` (etcd3's per-host breaker), recognised by its flag:
 * etcd3 may bundle its own copy of cockatiel, so `instanceof` is not reliable.
 */
function isBrokenCircuit(error: Error): boolean {
  return 'isBrokenCircuitError' in error && error.isBrokenCircuitError === true;
}

/**
 * Deadlines of calls to a datastore that may not answer: the one place where a call is
 * raced against its time bound, for the KV backends and the store types alike.
 * @module
 */

/** The bound of one operation, which may span several calls. */
export interface Deadline {
  /** When the operation ends, for clients that take an absolute deadline (gRPC). */
  readonly at: Date;
  /** Aborts at `at`. Its timer is unref'd: a pending deadline never keeps the process alive. */
  readonly signal: AbortSignal;
}

/** A deadline `timeoutMs` from now. */
export function deadlineIn(timeoutMs: number): Deadline {
  // AbortSignal.timeout takes a non-negative integer.
  const delayMs = Math.max(0, Math.ceil(timeoutMs));
  return { at: new Date(Date.now() + delayMs), signal: AbortSignal.timeout(delayMs) };
}

/**
 * Settles like `call`, or rejects with `expired()` once `signal` aborts (at once if it
 * already has). The caller chooses the error, so each layer keeps raising its own class.
 */
export async function withDeadline<T>(call: Promise<T>, signal: AbortSignal, expired: () => Error): Promise<T> {
  let onAbort = (): void => undefined;
  const aborted = new Promise<never>((_, reject) => {
    onAbort = () => reject(expired());
    if (signal.aborted) onAbort();
    else signal.addEventListener('abort', onAbort, { once: true });
  });
  try {
    return await Promise.race([call, aborted]);
  } finally {
    signal.removeEventListener('abort', onAbort);
  }
}

/** {@link withDeadline} with a deadline `timeoutMs` from now. */
export function withTimeout<T>(call: Promise<T>, timeoutMs: number, expired: () => Error): Promise<T> {
  return withDeadline(call, deadlineIn(timeoutMs).signal, expired);
}

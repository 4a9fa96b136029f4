/**
 * The one catalogue of error codes: every code an error of commitd may carry, the HTTP
 * problem it answers as, and each problem's status and title. The compiler checks that
 * every code is listed; `src/http/problems.ts` and the worker SDK read the same tables.
 * @module
 */

/** The problems of the HTTP contract (RFC 9457 `code` member), with status and title. */
export const PROBLEMS = {
  invalid_request: { status: 400, title: 'Invalid request' },
  unauthorized: { status: 401, title: 'Unauthorized' },
  forbidden: { status: 403, title: 'Forbidden' },
  not_found: { status: 404, title: 'Not found' },
  method_not_allowed: { status: 405, title: 'Method not allowed' },
  session_busy: { status: 409, title: 'Session busy' },
  store_conflict: { status: 409, title: 'Store conflict' },
  payload_too_large: { status: 413, title: 'Payload too large' },
  unsupported_media_type: { status: 415, title: 'Unsupported media type' },
  key_reused: { status: 422, title: 'Idempotency key reused' },
  unavailable: { status: 503, title: 'Service unavailable' },
  internal: { status: 500, title: 'Internal error' },
} as const satisfies Record<string, { readonly status: number; readonly title: string }>;

/** A problem code of the contract; `internal` only ever means a bug. */
export type ProblemCode = keyof typeof PROBLEMS;

/** Every problem code, in the order above (for schemas). */
export const PROBLEM_CODES = Object.keys(PROBLEMS) as ProblemCode[];

/** Every code a {@link CommitdError} may carry: stable, UPPER_SNAKE_CASE. */
export type ErrorCode =
  // the request
  | 'INVALID_REQUEST'
  | 'NOT_CANONICALIZABLE'
  | 'ALREADY_REGISTERED'
  | 'PAYLOAD_TOO_LARGE'
  // sessions and keys
  | 'NOT_FOUND'
  | 'NOT_IN_SESSION'
  | 'IN_SESSION'
  | 'SESSION_BUSY'
  | 'KEY_REUSED'
  | 'IDEMPOTENCY_KEY_MISMATCH'
  | 'ALREADY_COMMITTED'
  // stores
  | 'STORE_CONFLICT'
  | 'CHANGE_REJECTED'
  | 'BOOKKEEPING_REFUSED'
  | 'MARKER_CONFLICT'
  | 'MARKER_EXISTS'
  | 'NOT_WRITABLE'
  | 'STORE_OPEN_FAILED'
  // the coordinator KV
  | 'VERSION_MISMATCH'
  | 'CONSTRAINT_VIOLATED'
  | 'ALREADY_EXISTS'
  // passing conditions
  | 'UNAVAILABLE'
  | 'FAILPOINT'
  // start-up
  | 'INVALID_CONFIG'
  | 'INSTANCE_ID_IN_USE'
  | 'PLUGIN_LOAD_FAILED';

/**
 * Code → problem. `internal` marks codes that never reach a client on purpose: a lower
 * layer that lets one escape has a bug, answered 500 and logged.
 */
export const PROBLEM_OF: Readonly<Record<ErrorCode, ProblemCode>> = {
  INVALID_REQUEST: 'invalid_request',
  NOT_CANONICALIZABLE: 'invalid_request',
  // A store name registered twice: the request is wrong, not the service.
  ALREADY_REGISTERED: 'invalid_request',
  PAYLOAD_TOO_LARGE: 'payload_too_large',
  NOT_FOUND: 'not_found',
  NOT_IN_SESSION: 'not_found',
  IN_SESSION: 'session_busy',
  SESSION_BUSY: 'session_busy',
  KEY_REUSED: 'key_reused',
  IDEMPOTENCY_KEY_MISMATCH: 'key_reused',
  // A store already holds a marker for the key (its result expired here): the key was used.
  ALREADY_COMMITTED: 'key_reused',
  STORE_CONFLICT: 'store_conflict',
  CHANGE_REJECTED: 'store_conflict',
  // A change that reaches commitd's bookkeeping, or a limit commitd sets: refused as input.
  BOOKKEEPING_REFUSED: 'invalid_request',
  // Turned into STORE_CONFLICT naming the store before they leave the coordinator.
  MARKER_CONFLICT: 'store_conflict',
  // Handled inside the committable helper.
  MARKER_EXISTS: 'internal',
  NOT_WRITABLE: 'internal',
  // Turned into INVALID_REQUEST by the coordinator when a registration cannot open.
  STORE_OPEN_FAILED: 'internal',
  // A record changed under a compare-revision write: another instance got there first.
  VERSION_MISMATCH: 'session_busy',
  CONSTRAINT_VIOLATED: 'session_busy',
  ALREADY_EXISTS: 'session_busy',
  UNAVAILABLE: 'unavailable',
  // An injected fault: passing, like any other a retry can get past.
  FAILPOINT: 'unavailable',
  INVALID_CONFIG: 'internal',
  // Start-up only: a second live process with this instance id refuses to start.
  INSTANCE_ID_IN_USE: 'internal',
  PLUGIN_LOAD_FAILED: 'internal',
};

/** The message of anything thrown: an Error's message, else its string form. */
export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** Base of every error commitd raises on purpose; `code` is stable across releases. */
export class CommitdError extends Error {
  /** Stable, machine-readable error code, listed in {@link PROBLEM_OF}. */
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

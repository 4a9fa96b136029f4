/**
 * What a `CommitdClient` call can fail with. Callers branch on the class and, for answers
 * from the server, on the contract's `code` — never on messages.
 * @module
 */
import { PROBLEMS, type ProblemCode } from '../../../src/errors/catalogue.ts';

export type { ProblemCode } from '../../../src/errors/catalogue.ts';

/**
 * The error codes of the HTTP API v1 contract (DESIGN.md) with their statuses, read from
 * the server's catalogue; `internal` (500) is the server owning up to a bug.
 */
export const PROBLEM_STATUS: Readonly<Record<ProblemCode, number>> = Object.fromEntries(
  Object.entries(PROBLEMS).map(([code, { status }]) => [code, status]),
) as Record<ProblemCode, number>;

/** An RFC 9457 problem as commitd sends it; extra members are kept. */
export interface Problem {
  readonly type?: string;
  readonly title?: string;
  readonly status: number;
  readonly detail?: string;
  readonly code: ProblemCode;
  readonly [member: string]: unknown;
}

/** Base of every error the client raises on purpose. */
export class CommitdClientError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** The server answered with a contract problem (`application/problem+json`). */
export class CommitdApiError extends CommitdClientError {
  readonly status: number;
  readonly code: ProblemCode;
  readonly detail: string;
  /** The problem document as received. */
  readonly problem: Problem;
  /** From `Retry-After`, in milliseconds, when the server sent one. */
  readonly retryAfterMs: number | undefined;

  constructor(problem: Problem, retryAfterMs?: number) {
    const detail = problem.detail ?? problem.title ?? `HTTP ${problem.status}`;
    super(`${problem.code}: ${detail}`);
    this.status = problem.status;
    this.code = problem.code;
    this.detail = detail;
    this.problem = problem;
    this.retryAfterMs = retryAfterMs;
  }
}

/**
 * No answer: the connection failed or timed out. `mayHaveReachedServer` is false only
 * when the request cannot have been received (connection refused, name not resolved),
 * which makes even a non-idempotent request safe to send again.
 */
export class CommitdNetworkError extends CommitdClientError {
  /** The system or undici error code when there is one (`ECONNREFUSED`, `UND_ERR_SOCKET`, …), else `TIMEOUT` or `NETWORK`. */
  readonly reason: string;
  readonly mayHaveReachedServer: boolean;

  constructor(url: string, reason: string, mayHaveReachedServer: boolean, cause: unknown) {
    super(`cannot reach ${url}: ${reason}`, { cause });
    this.reason = reason;
    this.mayHaveReachedServer = mayHaveReachedServer;
  }
}

/** The server answered outside the contract: not a problem (a proxy's 502, say), or a reply of the wrong shape. */
export class CommitdProtocolError extends CommitdClientError {
  readonly status: number;
  /** The start of the body, for the report. */
  readonly body: string;

  constructor(status: number, why: string, body: string) {
    super(`unexpected answer (HTTP ${status}): ${why}`);
    this.status = status;
    this.body = body.slice(0, 500);
  }
}

/**
 * A batch of changes may or may not have been applied: its request was sent and the answer
 * lost. Sending it again could apply it twice inside the session, and committing could
 * commit it once or not at all, so the session handle refuses both: cancel and redo the
 * session under the same key (what `CommitdClient.withSession` does).
 */
export class CommitdUncertainError extends CommitdClientError {
  readonly key: string;
  readonly store: string;

  constructor(key: string, store: string, cause: unknown) {
    super(`changes to store ${JSON.stringify(store)} in session ${JSON.stringify(key)} may or may not have been applied: cancel and redo the session`, {
      cause,
    });
    this.key = key;
    this.store = store;
  }
}

/** The handle was used after `commit` or `cancel`, or before a failed begin. */
export class SessionClosedError extends CommitdClientError {
  constructor(key: string, operation: string) {
    super(`cannot ${operation}: session ${JSON.stringify(key)} is closed`);
  }
}

/** True when `error` is a problem answer, optionally with one of `codes`; narrows the type. */
export function isApiError(error: unknown, ...codes: ProblemCode[]): error is CommitdApiError {
  return error instanceof CommitdApiError && (codes.length === 0 || codes.includes(error.code));
}

function isProblemCode(value: unknown): value is ProblemCode {
  return typeof value === 'string' && Object.hasOwn(PROBLEM_STATUS, value);
}

function codeForStatus(status: number): ProblemCode | undefined {
  // 409 is ambiguous (session_busy or store_conflict): without a code it is not ours.
  const codes = (Object.keys(PROBLEM_STATUS) as ProblemCode[]).filter((code) => PROBLEM_STATUS[code] === status);
  return codes.length === 1 ? codes[0] : undefined;
}

/**
 * Turns an error answer into a `CommitdApiError`, or a `CommitdProtocolError` when it is
 * outside the contract. A body without a `code` still maps when its status names exactly
 * one code (a 404 from something in front of commitd, say); a 409 without one does not.
 */
export function problemFromResponse(status: number, bodyText: string, retryAfterMs?: number): CommitdApiError | CommitdProtocolError {
  let body: unknown;
  try {
    body = JSON.parse(bodyText);
  } catch {
    body = undefined;
  }
  const members: Record<string, unknown> = typeof body === 'object' && body !== null && !Array.isArray(body) ? { ...body } : {};
  const code = isProblemCode(members.code) ? members.code : codeForStatus(status);
  if (code === undefined) {
    return new CommitdProtocolError(status, 'not a contract problem', bodyText);
  }
  const text = (value: unknown): string | undefined => (typeof value === 'string' && value !== '' ? value : undefined);
  const problem: Problem = {
    ...members,
    type: text(members.type),
    title: text(members.title),
    status,
    detail: text(members.detail) ?? text(members.message),
    code,
  };
  return new CommitdApiError(problem, retryAfterMs);
}

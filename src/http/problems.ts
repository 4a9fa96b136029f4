/**
 * Every error the HTTP layer answers, as an RFC 9457 `application/problem+json` body
 * `{type, title, status, detail, code}`: the mapping from error codes (coordinator, core,
 * fastify) to statuses is the catalogue in `src/errors/catalogue.ts`.
 * @module
 */
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { CommitdError, PROBLEM_OF, PROBLEMS } from '../errors/catalogue.ts';
import { PROBLEM_CONTENT_TYPE, type Problem, type ProblemCode } from '../contract/schemas.ts';

/** Where problem type URIs live: `<base><code>`. */
export const PROBLEM_TYPE_BASE = 'https://commitd.dev/problems/';

/** Members a store's own detail fields must not overwrite; such a field is renamed `storeCode`, `storeDetail`, … */
const reservedMembers = new Set(['type', 'title', 'status', 'detail', 'code', 'instance', 'store']);

/** A problem raised by the HTTP layer itself (auth, key resolution). */
export class HttpProblem extends Error {
  readonly status: number;
  readonly code: ProblemCode;
  readonly headers: Readonly<Record<string, string>>;

  constructor(status: number, code: ProblemCode, detail: string, headers: Readonly<Record<string, string>> = {}) {
    super(detail);
    this.name = 'HttpProblem';
    this.status = status;
    this.code = code;
    this.headers = headers;
  }
}

/** A problem body, with the headers that go with it. */
export interface ProblemAnswer {
  readonly problem: Problem;
  readonly headers: Readonly<Record<string, string>>;
}

/** Builds a problem body for `code`. */
export function problem(status: number, code: ProblemCode, detail: string, extensions: Readonly<Record<string, unknown>> = {}): Problem {
  return { ...extensions, type: `${PROBLEM_TYPE_BASE}${code}`, title: PROBLEMS[code].title, status, detail, code };
}

/**
 * Maps any thrown value to a problem, or to `undefined` when it is unexpected (a bug,
 * which the caller answers with 500 and logs).
 */
export function problemFor(error: unknown): ProblemAnswer | undefined {
  if (error instanceof HttpProblem) {
    return { problem: problem(error.status, error.code, error.message), headers: error.headers };
  }
  if (error instanceof CommitdError) return fromCommitdError(error);
  if (isFastifyClientError(error)) return fromFastifyError(error);
  return undefined;
}

function fromCommitdError(error: CommitdError): ProblemAnswer | undefined {
  const code = PROBLEM_OF[error.code];
  if (code === 'internal') return undefined;
  const headers: Record<string, string> = {};
  if (code === 'unavailable') headers['retry-after'] = String(retryAfterSeconds(error));
  return { problem: problem(PROBLEMS[code].status, code, error.message, extensionsOf(error)), headers };
}

/**
 * A store conflict carries the store's name and what the store said (e.g. sqlite's
 * `code: SQLITE_CONSTRAINT_UNIQUE`, which becomes `storeCode`) as extension members.
 */
function extensionsOf(error: CommitdError): Record<string, unknown> {
  const extensions: Record<string, unknown> = {};
  if ('detail' in error && isRecord(error.detail)) {
    for (const [name, value] of Object.entries(error.detail)) {
      extensions[reservedMembers.has(name) ? `store${name[0]?.toUpperCase()}${name.slice(1)}` : name] = value;
    }
  }
  if ('store' in error && typeof error.store === 'string') extensions.store = error.store;
  return extensions;
}

/** `ServiceUnavailableError` says how long to wait; the KV's `UnavailableError` does not: 1 s. */
function retryAfterSeconds(error: CommitdError): number {
  const seconds = 'retryAfterSeconds' in error ? error.retryAfterSeconds : undefined;
  return typeof seconds === 'number' && Number.isFinite(seconds) && seconds > 0 ? Math.ceil(seconds) : 1;
}

function isFastifyClientError(error: unknown): error is FastifyError & { statusCode: number } {
  return error instanceof Error && 'statusCode' in error && typeof error.statusCode === 'number' && error.statusCode >= 400 && error.statusCode < 500;
}

/**
 * Fastify's own 4xx (validation, bad JSON, unsupported media type, body limit). Statuses
 * outside the contract's list collapse to 400: a 415 is an invalid request here.
 */
function fromFastifyError(error: FastifyError & { statusCode: number }): ProblemAnswer {
  if (error.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') {
    return { problem: problem(400, 'invalid_request', 'unsupported content type: send application/json'), headers: {} };
  }
  if (error.statusCode === 413) return { problem: problem(413, 'payload_too_large', error.message), headers: {} };
  if (error.statusCode === 401) return { problem: problem(401, 'unauthorized', error.message), headers: {} };
  if (error.statusCode === 404) return { problem: problem(404, 'not_found', error.message), headers: {} };
  return { problem: problem(400, 'invalid_request', error.message), headers: {} };
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Sends a problem: status, headers, `application/problem+json`. */
export function sendProblem(reply: FastifyReply, answer: ProblemAnswer): FastifyReply {
  return reply.code(answer.problem.status).headers(answer.headers).type(PROBLEM_CONTENT_TYPE).send(answer.problem);
}

/** The app's error handler: expected errors become their problem, anything else a logged 500. */
export function handleError(error: unknown, request: FastifyRequest, reply: FastifyReply): FastifyReply {
  const answer = problemFor(error);
  if (answer === undefined) {
    request.log.error({ err: error }, 'unexpected error answering a request');
    return sendProblem(reply, { problem: problem(500, 'internal', `unexpected error; it was logged under request id ${request.id}`), headers: {} });
  }
  if (answer.problem.status === 503) request.log.warn({ err: error }, 'answering 503 unavailable');
  else request.log.debug({ code: answer.problem.code, detail: answer.problem.detail }, 'answering a problem');
  return sendProblem(reply, answer);
}

/** No route for this method and path (fastify answers a wrong method the same way). */
export function handleNotFound(request: FastifyRequest, reply: FastifyReply): FastifyReply {
  const path = request.url.split('?', 1)[0] ?? request.url;
  return sendProblem(reply, { problem: problem(404, 'not_found', `no route ${request.method} ${path}`), headers: {} });
}

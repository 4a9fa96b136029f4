/**
 * Every error the HTTP layer answers, as an RFC 9457 `application/problem+json` body
 * `{type, title, status, detail, code}`: the mapping from error codes (coordinator, core,
 * fastify) to statuses is the catalogue in `src/errors/catalogue.ts`.
 * @module
 */
import { maxHeaderSize } from 'node:http';
import type { Duplex } from 'node:stream';
import type { FastifyBaseLogger, FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { CommitdError, PROBLEM_OF, PROBLEMS } from '../errors/catalogue.ts';
import { PROBLEM_CONTENT_TYPE, type Problem, type ProblemCode } from '../contract/schemas.ts';

/** Where problem type URIs live: `<base><code>`. */
export const PROBLEM_TYPE_BASE = 'https://commitd.dev/problems/';

/** Path parameters longer than this miss their route (fastify's `maxParamLength`); keys and store names are far shorter. */
export const MAX_PARAM_LENGTH = 1024;

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
export function problemFor(error: unknown, request?: FastifyRequest): ProblemAnswer | undefined {
  if (error instanceof HttpProblem) {
    return { problem: problem(error.status, error.code, error.message), headers: error.headers };
  }
  if (error instanceof CommitdError) return fromCommitdError(error);
  if (isFastifyClientError(error)) return fromFastifyError(error, request);
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
 * Fastify's own 4xx (validation, bad JSON, unsupported media type, body limit, bad URL).
 * Each answers with the status of its problem code in the catalogue; those the contract has
 * no code for (414 of an over-long path parameter, say) are an invalid request (400).
 */
function fromFastifyError(error: FastifyError & { statusCode: number }, request: FastifyRequest | undefined): ProblemAnswer {
  const answer = (code: ProblemCode, detail: string): ProblemAnswer => ({ problem: problem(PROBLEMS[code].status, code, detail), headers: {} });
  switch (error.code) {
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE': {
      const type = request?.headers['content-type'];
      const given = type === undefined ? 'this content type' : `content type ${JSON.stringify(type)}`;
      return answer('unsupported_media_type', `commitd does not accept ${given}: send the body as application/json`);
    }
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return answer('payload_too_large', `the request body exceeds the limit of ${bodyLimitOf(request) ?? 'the configured number of'} bytes`);
    case 'FST_ERR_BAD_URL':
      return answer('invalid_request', `the URL path ${JSON.stringify(pathOf(request))} is not valid percent-encoding`);
    case 'FST_ERR_MAX_PARAM_LENGTH':
      return answer(
        'invalid_request',
        `a path segment of ${JSON.stringify(truncate(pathOf(request)))} is longer than ${MAX_PARAM_LENGTH} characters: a key has 1–200 characters, a store name 1–63`,
      );
  }
  if (error.statusCode === 413) return answer('payload_too_large', error.message);
  if (error.statusCode === 401) return answer('unauthorized', error.message);
  if (error.statusCode === 404) return answer('not_found', error.message);
  return answer('invalid_request', error.message);
}

/** The route's body limit; requests fastify builds for framework errors have no route. */
function bodyLimitOf(request: FastifyRequest | undefined): number | undefined {
  try {
    return request?.routeOptions.bodyLimit;
  } catch {
    return undefined;
  }
}

function pathOf(request: FastifyRequest | undefined): string {
  const url = request?.raw.url ?? '';
  return url.split('?', 1)[0] ?? url;
}

function truncate(text: string, length = 60): string {
  return text.length > length ? `${text.slice(0, length)}…` : text;
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
  const answer = problemFor(error, request);
  if (answer === undefined) {
    request.log.error({ err: error }, 'unexpected error answering a request');
    return sendProblem(reply, { problem: problem(500, 'internal', `unexpected error; it was logged under request id ${request.id}`), headers: {} });
  }
  if (answer.problem.status === 503) request.log.warn({ err: error }, 'answering 503 unavailable');
  else request.log.debug({ code: answer.problem.code, detail: answer.problem.detail }, 'answering a problem');
  return sendProblem(reply, answer);
}

/**
 * The not-found handler: a path no route has answers 404; a path that exists with other
 * methods answers 405 with `Allow` listing them. `allowedMethods` gives a path's methods.
 */
export function notFoundHandler(allowedMethods: (path: string) => readonly string[]) {
  return (request: FastifyRequest, reply: FastifyReply): FastifyReply => {
    const path = pathOf(request);
    const allowed = allowedMethods(path);
    if (allowed.length > 0) {
      const detail = `${request.method} is not allowed on ${path}; it allows ${allowed.join(', ')}`;
      return sendProblem(reply, { problem: problem(405, 'method_not_allowed', detail), headers: { allow: allowed.join(', ') } });
    }
    return sendProblem(reply, { problem: problem(404, 'not_found', `no route ${request.method} ${path}`), headers: {} });
  };
}

/**
 * Answers what Node's HTTP parser refuses before fastify sees a request (headers over the
 * limit, a garbage request line, a request not received in time): fastify's own handler
 * writes `{"message":"Client Error"}`; this one writes a problem and closes the connection.
 * Bound to the fastify instance (its `clientErrorHandler` option).
 */
export function handleClientError(this: { log: FastifyBaseLogger }, error: Error & { code?: string }, socket: Duplex): void {
  // A reset connection has nobody left to answer (https://nodejs.org/api/http.html#event-clienterror).
  if (error.code === 'ECONNRESET' || socket.destroyed) return;
  const detail =
    error.code === 'HPE_HEADER_OVERFLOW'
      ? `the request line and headers exceed the limit of ${maxHeaderSize} bytes`
      : error.code === 'ERR_HTTP_REQUEST_TIMEOUT'
        ? 'the request was not received in time'
        : `the request is not valid HTTP/1.1 (${error.code ?? error.message})`;
  this.log.debug({ err: error }, 'answering a client error');
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  const body = JSON.stringify(problem(400, 'invalid_request', detail));
  socket.end(
    `HTTP/1.1 400 Bad Request\r\nContent-Type: ${PROBLEM_CONTENT_TYPE}\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
  );
}

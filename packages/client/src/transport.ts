/**
 * One HTTP exchange with commitd: builds the request, maps every way it can fail onto the
 * client's error classes, and parses the answer into a typed value. No retries here.
 * @module
 */
import { CommitdNetworkError, CommitdProtocolError, problemFromResponse } from './errors.ts';
import { ReplyShapeError } from './replies.ts';
import { parseRetryAfter } from './retry.ts';

/** Where and how to talk to commitd. */
export interface TransportOptions {
  /** Base URL, e.g. `http://127.0.0.1:8080`; a path prefix is kept. */
  readonly url: string;
  /** Sent as `Authorization: Bearer <token>`. */
  readonly token?: string;
  /** One attempt's limit, answer body included. */
  readonly requestTimeoutMs: number;
  readonly fetch: typeof fetch;
}

/** One request and how to read its answer. */
export interface HttpRequest<T> {
  readonly method: 'GET' | 'POST' | 'DELETE';
  /** Relative to the base URL, without a leading slash: `v1/sessions`. */
  readonly path: string;
  readonly body?: unknown;
  readonly query?: Readonly<Record<string, string | undefined>>;
  readonly parse: (body: unknown) => T;
  readonly signal?: AbortSignal;
}

/**
 * Failures where the request cannot have been received: nothing listened, or no
 * connection was made. Anything else (reset, timeout, a socket closed mid-answer)
 * may have reached the server, which matters for requests that are not idempotent.
 */
const NOT_SENT = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'EADDRNOTAVAIL', 'UND_ERR_CONNECT_TIMEOUT']);

/** The innermost message: undici's own ("fetch failed") says nothing. */
function rootMessage(error: unknown): string {
  let current = error;
  for (let depth = 0; current instanceof Error && current.cause instanceof Error && depth < 5; depth++) current = current.cause;
  return current instanceof Error ? current.message : String(current);
}

function errorCode(error: unknown): string | undefined {
  // undici wraps the system error: TypeError("fetch failed") → cause (maybe an AggregateError) → code.
  for (let current = error, depth = 0; current instanceof Error && depth < 5; current = current.cause, depth++) {
    const code = (current as { code?: unknown }).code;
    if (typeof code === 'string') return code;
    if (current instanceof AggregateError && current.errors[0] instanceof Error) {
      const inner = (current.errors[0] as { code?: unknown }).code;
      if (typeof inner === 'string') return inner;
    }
  }
  return undefined;
}

/** Speaks to one commitd base URL. */
export class Transport {
  readonly baseUrl: string;
  readonly #options: TransportOptions;

  constructor(options: TransportOptions) {
    this.#options = options;
    this.baseUrl = options.url.endsWith('/') ? options.url : `${options.url}/`;
    // Fail at construction, not at the first call, on a URL that cannot work.
    const parsed = new URL(this.baseUrl);
    if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') throw new TypeError(`commitd URL must be http(s): ${options.url}`);
  }

  /** Sends `request` once; resolves with the parsed answer or rejects with a client error. */
  async send<T>(request: HttpRequest<T>): Promise<T> {
    const url = new URL(request.path, this.baseUrl);
    for (const [name, value] of Object.entries(request.query ?? {})) if (value !== undefined) url.searchParams.set(name, value);
    const timeout = AbortSignal.timeout(this.#options.requestTimeoutMs);
    const signal = request.signal ? AbortSignal.any([request.signal, timeout]) : timeout;
    const headers: Record<string, string> = { accept: 'application/json, application/problem+json' };
    if (request.body !== undefined) headers['content-type'] = 'application/json';
    if (this.#options.token) headers.authorization = `Bearer ${this.#options.token}`;

    let status: number;
    let retryAfter: string | null;
    let text: string;
    try {
      const response = await this.#options.fetch(url, {
        method: request.method,
        headers,
        body: request.body === undefined ? undefined : JSON.stringify(request.body),
        signal,
      });
      status = response.status;
      retryAfter = response.headers.get('retry-after');
      text = await response.text();
    } catch (error) {
      if (request.signal?.aborted) throw error;
      throw this.#networkError(url, error, timeout.aborted);
    }

    if (status < 200 || status >= 300) throw problemFromResponse(status, text, parseRetryAfter(retryAfter));
    let body: unknown;
    try {
      body = text === '' ? undefined : JSON.parse(text);
    } catch {
      throw new CommitdProtocolError(status, 'the body is not JSON', text);
    }
    try {
      return request.parse(body);
    } catch (error) {
      if (error instanceof ReplyShapeError) throw new CommitdProtocolError(status, error.message, text);
      throw error;
    }
  }

  #networkError(url: URL, error: unknown, timedOut: boolean): CommitdNetworkError {
    const where = `${url.origin}${url.pathname}`;
    if (timedOut) return new CommitdNetworkError(where, `TIMEOUT after ${this.#options.requestTimeoutMs} ms`, true, error);
    const code = errorCode(error);
    const reason = code ?? rootMessage(error);
    return new CommitdNetworkError(where, reason, code === undefined || !NOT_SENT.has(code), error);
  }
}

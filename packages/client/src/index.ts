/**
 * The worker SDK: a typed client of the commitd HTTP API v1 that retries what is safe to
 * retry, always under the same idempotency key.
 *
 * What is retried (on a network error, on `503 unavailable` after at least `Retry-After`,
 * with exponential backoff and full jitter, within `RetryPolicy` bounds):
 * - everything keyed and idempotent on the server — one-shot commit, begin, commit,
 *   cancel, reads. A resent commit gets the committed answer, or `not_found` if the
 *   session never reached its commit point (then redo the session under the same key).
 *   One-shot and session commits also wait out `409 session_busy`: the key's holder is an
 *   earlier attempt whose answer was lost, or a recovery, and either finishes soon.
 * - a batch of changes (`SessionHandle.apply`) only when it cannot have reached the server
 *   (connection refused) or was refused with 503. After any other network error it may
 *   already be applied, and sending it again would apply it twice inside the session: the
 *   handle turns `uncertain`, refuses to commit, and the recovery is cancel + redo under
 *   the same key — `withSession` does exactly that.
 * - store registration and operator `resolve` likewise only when not sent: they are not
 *   keyed, so a resend after a lost answer could act twice.
 * A problem answer other than 503 is the server's decision and is never retried.
 * @module
 */
import { randomUUID } from 'node:crypto';
import { CommitdApiError, CommitdNetworkError, CommitdUncertainError, isApiError, type ProblemCode } from './errors.ts';
import {
  parseApplied,
  parseBegun,
  parseCancelled,
  parseCommitted,
  parseResolved,
  parseSession,
  parseSessionPage,
  parseStore,
  parseStoreList,
  type AbandonedReply,
  type ActiveReply,
  type ApplyReply,
  type CancelReply,
  type CommittedReply,
  type ListableState,
  type SessionPage,
  type SessionReply,
  type StoreDefinition,
  type StoreInfoReply,
} from './replies.ts';
import { DEFAULT_RETRY_POLICY, retry, type RetryDecision, type RetryPolicy } from './retry.ts';
import { SessionHandle, type Change, type SessionRequests } from './session.ts';
import { Transport, type HttpRequest } from './transport.ts';

export * from './errors.ts';
export type {
  AbandonedReply,
  ActiveReply,
  ApplyReply,
  CancelReply,
  CommittedReply,
  ListableState,
  SessionPage,
  SessionReply,
  StoreDefinition,
  StoreInfoReply,
} from './replies.ts';
export { backoffDelay, DEFAULT_RETRY_POLICY, parseRetryAfter, type RetryPolicy } from './retry.ts';
export { SessionHandle, type Change, type SessionHandleState } from './session.ts';

/** Changes for several stores: store name → that store's changes, in order. */
export type Changes = Readonly<Record<string, readonly Change[]>>;

/** What `onRetry` hears before each wait. */
export interface RetryEvent {
  /** `commit`, `begin`, `apply`, … */
  readonly operation: string;
  readonly key?: string;
  /** 1 for the first retry. */
  readonly retry: number;
  readonly delayMs: number;
  readonly error: unknown;
}

export interface CommitdClientOptions {
  /** commitd's base URL, e.g. `http://127.0.0.1:8080`. */
  readonly url: string;
  /** Bearer token (`COMMITD_TOKEN` on the server). */
  readonly token?: string;
  /** Overrides of `DEFAULT_RETRY_POLICY`; `{maxAttempts: 1}` disables retries. */
  readonly retry?: Partial<RetryPolicy>;
  /** Limit of one attempt, default 30 s. A commit that outlives it is retried, not lost. */
  readonly requestTimeoutMs?: number;
  /** For logging: called before each retry's wait. */
  readonly onRetry?: (event: RetryEvent) => void;
  /** Replaces the global `fetch` (tests, proxies). */
  readonly fetch?: typeof fetch;
}

export interface SessionOptions {
  /** The stores taking part; all configured stores when absent. */
  readonly stores?: readonly string[];
}

export interface WithSessionOptions extends SessionOptions {
  /** How many times the work may be redone after an uncertain apply or a lost session; default 3. */
  readonly maxRedos?: number;
}

/** A fresh idempotency key (a random UUID): within the key alphabet of the contract. */
export function generateKey(): string {
  return randomUUID();
}

/** How a call may be retried. */
interface Safety<T> {
  /** The server dedupes a resend by key: safe to resend after a lost answer. */
  readonly idempotent: boolean;
  /** Problem codes besides `unavailable` that mean "try again shortly" for this call. */
  readonly retryCodes?: readonly ProblemCode[];
  /**
   * Turns a problem answered after an earlier attempt's answer was lost into the result
   * that attempt would have had (e.g. `not_found` on a resent cancel: the first one worked).
   */
  readonly afterLostAnswer?: (error: CommitdApiError) => Promise<{ value: T } | undefined>;
}

const path = (...segments: string[]): string => segments.map(encodeURIComponent).join('/');

/** A commitd client. Cheap to make; one per worker is enough. */
export class CommitdClient {
  readonly #transport: Transport;
  readonly #policy: RetryPolicy;
  readonly #onRetry: ((event: RetryEvent) => void) | undefined;

  constructor(options: CommitdClientOptions) {
    this.#transport = new Transport({
      url: options.url,
      token: options.token,
      requestTimeoutMs: options.requestTimeoutMs ?? 30_000,
      fetch: options.fetch ?? globalThis.fetch,
    });
    this.#policy = { ...DEFAULT_RETRY_POLICY, ...options.retry };
    this.#onRetry = options.onRetry;
  }

  /** The base URL requests go to. */
  get url(): string {
    return this.#transport.baseUrl;
  }

  /**
   * Begin + apply + commit in one request (`POST /v1/commits`): the simplest safe call,
   * retried as a whole under one key. Without a key, one is generated (see the result's `key`).
   */
  commit(changes: Changes): Promise<CommittedReply>;
  commit(key: string | undefined, changes: Changes): Promise<CommittedReply>;
  commit(keyOrChanges: string | undefined | Changes, maybeChanges?: Changes): Promise<CommittedReply> {
    const [key, changes] = typeof keyOrChanges === 'object' ? [generateKey(), keyOrChanges] : [keyOrChanges ?? generateKey(), maybeChanges ?? {}];
    return this.#call(
      'commit',
      key,
      { method: 'POST', path: 'v1/commits', body: { key, changes }, parse: parseCommitted },
      {
        idempotent: true,
        retryCodes: ['session_busy'],
      },
    );
  }

  /**
   * Begins a session (`POST /v1/sessions`) and returns its handle. When the key is already
   * committed the handle is `replaying`: the same worker code then converges on the stored
   * result without sending changes again.
   */
  async session(key: string = generateKey(), options: SessionOptions = {}): Promise<SessionHandle> {
    const begin: HttpRequest<ActiveReply | CommittedReply> = {
      method: 'POST',
      path: 'v1/sessions',
      body: options.stores === undefined ? { key } : { key, stores: options.stores },
      parse: parseBegun,
    };
    const begun = await this.#call('begin', key, begin, {
      idempotent: true,
      // A begin whose answer was lost holds the key, and nobody else knows it is open: the
      // resend is then refused as busy until the idle timeout. Nothing is applied in it yet,
      // so cancel it and begin afresh. (Were it another worker's session under the same key,
      // that worker's next call fails with not_found: one key is one unit of work.)
      afterLostAnswer: async (error) => {
        if (error.code !== 'session_busy') return undefined;
        await this.#cancelRequest(key).catch((cancelError: unknown) => {
          if (!isApiError(cancelError, 'not_found')) throw cancelError; // gone already: as good as cancelled
        });
        return { value: await this.#call('begin', key, begin, { idempotent: true }) };
      },
    });
    return new SessionHandle(begun, this.#sessionRequests());
  }

  /**
   * Runs `work` in a session under `key` and commits; when an apply's outcome is unknown,
   * or the session vanished before it committed (`not_found`: a commitd restart, the idle
   * timeout), cancels and runs `work` again under the same key — safe because the key was
   * never committed. `work` must therefore apply the same changes each time it runs.
   */
  async withSession(key: string | undefined, work: (session: SessionHandle) => Promise<void>, options: WithSessionOptions = {}): Promise<CommittedReply> {
    const sessionKey = key ?? generateKey();
    const maxRedos = options.maxRedos ?? 3;
    for (let redo = 0; ; redo++) {
      const session = await this.session(sessionKey, options);
      try {
        await work(session);
        return await session.commit();
      } catch (error) {
        // One cleanup path for every failure: a cancel error must not hide the first one.
        await session.cancel().catch(() => undefined);
        const lost = error instanceof CommitdUncertainError || isApiError(error, 'not_found');
        if (!lost || redo >= maxRedos) throw error;
      }
    }
  }

  /** A session's state (`GET /v1/sessions/:key`), or undefined when there is none. */
  async get(key: string): Promise<SessionReply | undefined> {
    try {
      return await this.#call('get', key, { method: 'GET', path: path('v1', 'sessions', key), parse: parseSession }, { idempotent: true });
    } catch (error) {
      if (isApiError(error, 'not_found')) return undefined;
      throw error;
    }
  }

  /**
   * Every session of one state (`GET /v1/sessions`, page after page), newest first; no
   * state: the open and failed ones. For committed and abandoned sessions, which the
   * retention period may hold many of, prefer {@link listSessionsPage}.
   */
  async listSessions(filter: { state?: ListableState } = {}): Promise<SessionReply[]> {
    const sessions: SessionReply[] = [];
    let cursor: string | undefined;
    do {
      const page = await this.listSessionsPage({ state: filter.state, limit: 1000, cursor });
      sessions.push(...page.sessions);
      cursor = page.nextCursor;
    } while (cursor !== undefined);
    return sessions;
  }

  /** One page of sessions of one state, newest first; pass `nextCursor` back as `cursor` for the next. */
  listSessionsPage(query: { state?: ListableState; limit?: number; cursor?: string } = {}): Promise<SessionPage> {
    const { state, limit, cursor } = query;
    return this.#call(
      'listSessions',
      undefined,
      { method: 'GET', path: 'v1/sessions', query: { state, limit: limit?.toString(), cursor }, parse: parseSessionPage },
      { idempotent: true },
    );
  }

  /**
   * Cancels an open session by key (an operator's action; workers use their handle).
   * `not_found` when there is no open session under `key`.
   */
  cancel(key: string): Promise<CancelReply> {
    return this.#call(
      'cancel',
      key,
      { method: 'POST', path: path('v1', 'sessions', key, 'cancel'), parse: parseCancelled },
      {
        idempotent: true,
        afterLostAnswer: async (error) => (error.code === 'not_found' ? { value: { key, state: 'cancelled' } } : undefined),
      },
    );
  }

  /** An operator's decision on a `failed` session: roll forward again, or give it up. */
  resolve(key: string, action: 'retry' | 'abandon'): Promise<SessionReply | AbandonedReply> {
    return this.#call(
      'resolve',
      key,
      { method: 'POST', path: path('v1', 'sessions', key, 'resolve'), body: { action }, parse: parseResolved },
      { idempotent: false },
    );
  }

  /** The configured stores. */
  listStores(): Promise<StoreInfoReply[]> {
    return this.#call('listStores', undefined, { method: 'GET', path: 'v1/stores', parse: parseStoreList }, { idempotent: true });
  }

  /** Registers a store of a type the server has loaded. */
  addStore(definition: StoreDefinition): Promise<StoreInfoReply> {
    return this.#call('addStore', undefined, { method: 'POST', path: 'v1/stores', body: definition, parse: parseStore }, { idempotent: false });
  }

  /** Removes a store; `not_found` when there is none of that name. */
  async removeStore(name: string): Promise<void> {
    await this.#call(
      'removeStore',
      undefined,
      { method: 'DELETE', path: path('v1', 'stores', name), parse: () => undefined },
      {
        idempotent: true,
        afterLostAnswer: async (error) => (error.code === 'not_found' ? { value: undefined } : undefined),
      },
    );
  }

  #sessionRequests(): SessionRequests {
    return {
      apply: (key, store, changes) => this.#apply(key, store, changes),
      commit: (key) =>
        this.#call(
          'commit',
          key,
          { method: 'POST', path: path('v1', 'sessions', key, 'commit'), parse: parseCommitted },
          {
            idempotent: true,
            retryCodes: ['session_busy'],
          },
        ),
      cancel: (key) => this.#cancelRequest(key),
    };
  }

  async #apply(key: string, store: string, changes: readonly Change[]): Promise<ApplyReply> {
    const request = { method: 'POST', path: path('v1', 'sessions', key, 'changes'), body: { store, changes }, parse: parseApplied } as const;
    try {
      return await this.#call('apply', key, request, { idempotent: false });
    } catch (error) {
      if (error instanceof CommitdNetworkError && error.mayHaveReachedServer) throw new CommitdUncertainError(key, store, error);
      throw error;
    }
  }

  async #cancelRequest(key: string): Promise<void> {
    await this.#call('cancel', key, { method: 'POST', path: path('v1', 'sessions', key, 'cancel'), parse: () => undefined }, { idempotent: true });
  }

  /** One call with its retries. */
  async #call<T>(operation: string, key: string | undefined, request: HttpRequest<T>, safety: Safety<T>): Promise<T> {
    let answerLost = false;
    const decide = (error: unknown): RetryDecision => {
      if (error instanceof CommitdNetworkError) return { retry: safety.idempotent || !error.mayHaveReachedServer };
      if (error instanceof CommitdApiError && (error.code === 'unavailable' || safety.retryCodes?.includes(error.code))) {
        return { retry: true, notBeforeMs: error.retryAfterMs };
      }
      return { retry: false };
    };
    try {
      return await retry(
        async () => {
          try {
            return await this.#transport.send(request);
          } catch (error) {
            if (error instanceof CommitdNetworkError && error.mayHaveReachedServer) answerLost = true;
            throw error;
          }
        },
        {
          policy: this.#policy,
          decide,
          onRetry: this.#onRetry && ((event) => this.#onRetry?.({ operation, key, ...event })),
        },
      );
    } catch (error) {
      if (answerLost && error instanceof CommitdApiError && safety.afterLostAnswer) {
        const recovered = await safety.afterLostAnswer(error);
        if (recovered) return recovered.value;
      }
      throw error;
    }
  }
}

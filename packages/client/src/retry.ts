/**
 * Exponential backoff with full jitter, bounded in attempts and in total time, that waits
 * at least as long as the server's `Retry-After` asks.
 *
 * Our own, not p-retry 7 (the newest that runs on node 20): its delay is
 * `(1..2) × minTimeout × factor^n`, never full jitter; it cannot wait a delay the error
 * names (Retry-After), and it cuts a wait to the time left where we give up instead.
 * @module
 */
import { setTimeout as sleepFor } from 'node:timers/promises';

/** How hard a call is retried. */
export interface RetryPolicy {
  /** Attempts in all, the first included; 1 disables retries. */
  readonly maxAttempts: number;
  /** The ceiling of the first retry's delay; it doubles with each retry. */
  readonly baseDelayMs: number;
  /** No delay ceiling grows beyond this. */
  readonly maxDelayMs: number;
  /** No retry starts after this much time since the first attempt began. */
  readonly maxElapsedMs: number;
}

/**
 * Defaults sized for a commitd restart (a few seconds): about 1 min in all. The bound on
 * time matters more than the count — a worker must eventually give up and report.
 */
export const DEFAULT_RETRY_POLICY: RetryPolicy = {
  maxAttempts: 10,
  baseDelayMs: 100,
  maxDelayMs: 5_000,
  maxElapsedMs: 60_000,
};

/**
 * The delay before retry number `retry` (1 for the first retry): uniform in
 * `[0, min(maxDelayMs, baseDelayMs * 2^(retry-1)))` — "full jitter", which spreads
 * workers that failed together instead of having them return together.
 */
export function backoffDelay(retry: number, policy: RetryPolicy, random: () => number = Math.random): number {
  const ceiling = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** Math.max(0, retry - 1));
  return Math.floor(random() * ceiling);
}

/**
 * `Retry-After` in milliseconds from now: delay-seconds or an HTTP date (RFC 9110 §10.2.3).
 * Undefined when absent or unreadable; a date in the past is 0.
 */
export function parseRetryAfter(value: string | null | undefined, now: number = Date.now()): number | undefined {
  if (value === null || value === undefined) return undefined;
  const trimmed = value.trim();
  if (/^\d+$/.test(trimmed)) return Number(trimmed) * 1000;
  // Only the forms an HTTP date can take; Date.parse alone would read "5.5" as a year.
  if (!/^[A-Za-z]{3},? /.test(trimmed)) return undefined;
  const at = Date.parse(trimmed);
  return Number.isNaN(at) ? undefined : Math.max(0, at - now);
}

/** What to do with a failed attempt. */
export type RetryDecision =
  | { readonly retry: false }
  | { readonly retry: true /** The server's minimum wait (`Retry-After`). */; readonly notBeforeMs?: number };

/** The clock and the dice, replaceable in tests. */
export interface RetryEnvironment {
  readonly now: () => number;
  readonly sleep: (ms: number, signal?: AbortSignal) => Promise<void>;
  readonly random: () => number;
}

export const REAL_ENVIRONMENT: RetryEnvironment = {
  now: () => Date.now(),
  sleep: (ms, signal) => sleepFor(ms, undefined, { signal }),
  random: Math.random,
};

/** Called before each wait; `retry` counts from 1. */
export type RetryListener = (event: { readonly retry: number; readonly delayMs: number; readonly error: unknown }) => void;

export interface RetryOptions {
  readonly policy: RetryPolicy;
  /** Decides whether the error of attempt `attempt` (from 1) is worth another attempt. */
  readonly decide: (error: unknown, attempt: number) => RetryDecision;
  readonly onRetry?: RetryListener;
  readonly signal?: AbortSignal;
  readonly environment?: RetryEnvironment;
}

/**
 * Runs `attempt` until it succeeds, `decide` says stop, or the policy's bounds are reached;
 * then throws the last error unchanged, so callers still branch on its class and code.
 * A `Retry-After` longer than the time left ends the retries at once: waiting it out
 * would only delay the same failure.
 */
export async function retry<T>(attempt: (attempt: number) => Promise<T>, options: RetryOptions): Promise<T> {
  const { policy, decide, onRetry, signal } = options;
  const env = options.environment ?? REAL_ENVIRONMENT;
  const started = env.now();
  for (let n = 1; ; n++) {
    try {
      return await attempt(n);
    } catch (error) {
      const decision = decide(error, n);
      if (!decision.retry || n >= policy.maxAttempts || signal?.aborted) throw error;
      const delayMs = Math.max(backoffDelay(n, policy, env.random), decision.notBeforeMs ?? 0);
      if (env.now() + delayMs - started > policy.maxElapsedMs) throw error;
      onRetry?.({ retry: n, delayMs, error });
      await env.sleep(delayMs, signal);
    }
  }
}

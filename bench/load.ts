/**
 * A closed-loop load generator: `concurrency` sessions in flight, each worker starting the
 * next as soon as its last one finished, for a fixed measured window after a warm-up.
 * @module
 */

/** What one cell measured. */
export interface LoadResult {
  readonly concurrency: number;
  /** Sessions completed inside the measured window. */
  readonly sessions: number;
  /** Sessions completed in the whole run, warm-up and drain included. */
  readonly completed: number;
  readonly seconds: number;
  readonly perSecond: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  /** Sessions that failed (anywhere in the run, warm-up included). */
  readonly errors: number;
  readonly firstError?: string;
}

export interface LoadOptions {
  readonly concurrency: number;
  readonly warmupMs: number;
  readonly durationMs: number;
  /** Runs session number `n` (unique within the cell); rejects on failure. */
  readonly session: (n: number) => Promise<void>;
}

/** The `q`-quantile (0..1) of ascending `sorted`, nearest rank. */
export function quantile(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) return Number.NaN;
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[rank] as number;
}

/**
 * Runs the load. A session counts when it completes inside the window
 * `[start + warmupMs, start + warmupMs + durationMs]`; workers stop starting sessions at
 * the window's end and the ones in flight are awaited but not counted.
 */
export async function runClosedLoop(options: LoadOptions): Promise<LoadResult> {
  const start = performance.now();
  const windowStart = start + options.warmupMs;
  const windowEnd = windowStart + options.durationMs;
  const latencies: number[] = [];
  let next = 0;
  let completed = 0;
  let errors = 0;
  let firstError: string | undefined;
  const worker = async (): Promise<void> => {
    while (performance.now() < windowEnd) {
      const n = next++;
      const began = performance.now();
      try {
        await options.session(n);
      } catch (err) {
        errors += 1;
        firstError ??= err instanceof Error ? err.message : String(err);
        // A failing target must not spin: back off a little.
        await new Promise((resolve) => setTimeout(resolve, 10));
        continue;
      }
      const ended = performance.now();
      completed += 1;
      if (ended >= windowStart && ended <= windowEnd) latencies.push(ended - began);
    }
  };
  await Promise.all(Array.from({ length: options.concurrency }, worker));
  latencies.sort((a, b) => a - b);
  const seconds = options.durationMs / 1000;
  return {
    concurrency: options.concurrency,
    sessions: latencies.length,
    completed,
    seconds,
    perSecond: latencies.length / seconds,
    p50Ms: quantile(latencies, 0.5),
    p99Ms: quantile(latencies, 0.99),
    errors,
    ...(firstError === undefined ? {} : { firstError }),
  };
}

export interface CountOptions {
  readonly concurrency: number;
  /** Sessions to run, numbered 0 … total − 1. */
  readonly total: number;
  readonly session: (n: number) => Promise<void>;
  /** Called after every completed session with how many completed so far. */
  readonly onCompleted?: (completed: number) => void;
}

/** Runs exactly `total` sessions (failures included) with `concurrency` in flight. */
export async function runCount(options: CountOptions): Promise<{ completed: number; errors: number; seconds: number; firstError?: string }> {
  const started = performance.now();
  let next = 0;
  let completed = 0;
  let errors = 0;
  let firstError: string | undefined;
  const worker = async (): Promise<void> => {
    while (next < options.total) {
      const n = next++;
      try {
        await options.session(n);
        completed += 1;
        options.onCompleted?.(completed);
      } catch (err) {
        errors += 1;
        firstError ??= err instanceof Error ? err.message : String(err);
      }
    }
  };
  await Promise.all(Array.from({ length: options.concurrency }, worker));
  return { completed, errors, seconds: (performance.now() - started) / 1000, ...(firstError === undefined ? {} : { firstError }) };
}

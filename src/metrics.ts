/**
 * Prometheus metrics (prom-client), one registry per process, handed to the coordinator
 * (which counts) and to the HTTP layer (which serves `/metrics`).
 * @module
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

/** The metrics commitd keeps. */
export interface Metrics {
  readonly registry: Registry;
  readonly sessionsBegun: Counter;
  readonly sessionsCommitted: Counter;
  readonly sessionsCancelled: Counter<'reason'>;
  readonly sessionsRecovered: Counter<'outcome'>;
  readonly sessionsOpen: Gauge;
  readonly sessionsFailed: Gauge;
  /** Operators' retries and abandons of failed sessions, by action and outcome. */
  readonly sessionsResolved: Counter<'action' | 'outcome'>;
  /** Answered HTTP requests, by method, route (its pattern, not the path) and status. */
  readonly httpSeconds: Histogram<'method' | 'route' | 'status'>;
  /** Where `commitd_sessions_failed` reads its value at each scrape (the coordinator KV). */
  countFailedSessionsWith(count: () => Promise<number>): void;
  readonly openLogBytes: Gauge;
  readonly commitSeconds: Histogram;
  readonly kvSeconds: Histogram<'op' | 'ok'>;
}

/** Creates a fresh registry with commitd's metrics and Node's default ones. */
export function createMetrics(): Metrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  const registers = [registry];
  let countFailed: (() => Promise<number>) | undefined;
  return {
    registry,
    sessionsBegun: new Counter({ name: 'commitd_sessions_begun_total', help: 'Sessions begun (interactive and one-shot)', registers }),
    sessionsCommitted: new Counter({ name: 'commitd_sessions_committed_total', help: 'Sessions committed', registers }),
    sessionsCancelled: new Counter({
      name: 'commitd_sessions_cancelled_total',
      help: 'Sessions cancelled, by reason (request, idle, error, shutdown, recovery)',
      labelNames: ['reason'],
      registers,
    }),
    sessionsRecovered: new Counter({
      name: 'commitd_sessions_recovered_total',
      help: 'Sessions adopted after a crash, by outcome (committed, cancelled, failed): once per session',
      labelNames: ['outcome'],
      registers,
    }),
    sessionsOpen: new Gauge({ name: 'commitd_sessions_open', help: 'Sessions this instance drives now', registers }),
    sessionsFailed: new Gauge({
      name: 'commitd_sessions_failed',
      help: 'Sessions in state failed, awaiting an operator (read from the coordinator KV at each scrape)',
      registers,
      async collect() {
        // A KV that does not answer keeps the last value rather than failing the scrape.
        const failed = await countFailed?.().catch(() => undefined);
        if (failed !== undefined) this.set(failed);
      },
    }),
    sessionsResolved: new Counter({
      name: 'commitd_sessions_resolved_total',
      help: 'Operator actions on failed sessions, by action (retry, abandon) and outcome (committed, failed, abandoned, refused)',
      labelNames: ['action', 'outcome'],
      registers,
    }),
    httpSeconds: new Histogram({
      name: 'commitd_http_request_duration_seconds',
      help: 'Time from request to answer, by method, route pattern and status',
      labelNames: ['method', 'route', 'status'],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    }),
    countFailedSessionsWith(count) {
      countFailed = count;
    },
    openLogBytes: new Gauge({
      name: 'commitd_open_log_bytes',
      help: "Bytes of changes held by the open sessions' logs (canonical JSON), against the openLogBytes cap",
      registers,
    }),
    commitSeconds: new Histogram({
      name: 'commitd_commit_duration_seconds',
      help: 'Time from commit request to answer',
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers,
    }),
    kvSeconds: new Histogram({
      name: 'commitd_kv_operation_duration_seconds',
      help: 'Coordinator KV round trips, by operation and outcome',
      labelNames: ['op', 'ok'],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
      registers,
    }),
  };
}

/**
 * A commitd worker: takes jobs — one JSON object per line on stdin, e.g.
 * `{"id":"order-1","account":"acme","amount":42}` — and commits each to two stores, the
 * order to `main` and an audit row to `audit`, exactly once, keyed by the job's id.
 *
 * With commitd running as `npm start` leaves it (one sqlite store `main`):
 *   printf '%s\n' '{"id":"order-1","account":"acme","amount":42}' | npx tsx examples/worker.ts
 * The worker registers the second store, `audit` (sqlite, `audit.db` in commitd's data dir),
 * when the server does not have it yet. COMMITD_URL and COMMITD_TOKEN say where and how.
 *
 * `--sessions` sends each store's changes in its own request through a session handle
 * instead of one request per job (the shape for changes that arrive in pieces).
 *
 * Crash it, crash commitd, feed the same jobs again: every order is stored once. The job id
 * is the idempotency key, and a job's changes are derived from the job alone — no clock, no
 * random — so a retry sends the very same changes and the server recognises it.
 */
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { CommitdClient, CommitdClientError, CommitdNetworkError, type Changes, type CommittedReply } from '@commitd/client';

/** One unit of work. */
interface Job {
  readonly id: string;
  readonly account: string;
  readonly amount: number;
}

/** Parses one input line; undefined (with a message) when it is not a job. */
function parseJob(line: string): Job | undefined {
  try {
    const value: unknown = JSON.parse(line);
    if (typeof value === 'object' && value !== null) {
      const { id, account, amount } = value as Record<string, unknown>;
      if (typeof id === 'string' && typeof account === 'string' && typeof amount === 'number') return { id, account, amount };
    }
  } catch {
    // Reported below like any other malformed line.
  }
  console.error(`skipped: not a job: ${line}`);
  return undefined;
}

/** The tables. `IF NOT EXISTS` makes this idempotent by itself, so it can take a fresh key at each start. */
const SCHEMA: Changes = {
  main: [{ sql: 'CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, account TEXT NOT NULL, amount REAL NOT NULL)' }],
  audit: [{ sql: 'CREATE TABLE IF NOT EXISTS audit_log (job_id TEXT PRIMARY KEY, event TEXT NOT NULL)' }],
};

/** A job's changes, by store. Deterministic: the same job always gives the same changes. */
function changesOf(job: Job): Changes {
  return {
    main: [{ sql: 'INSERT INTO orders (id, account, amount) VALUES (?, ?, ?)', params: [job.id, job.account, job.amount] }],
    audit: [{ sql: 'INSERT INTO audit_log (job_id, event) VALUES (?, ?)', params: [job.id, `order for ${job.account}: ${job.amount}`] }],
  };
}

/** One request per job: begin, apply and commit together, resent as a whole on failure. */
function commitOnce(client: CommitdClient, job: Job): Promise<CommittedReply> {
  return client.commit(job.id, changesOf(job));
}

/**
 * A session per job, one request per store. `withSession` redoes the work under the same
 * key when a batch's fate is unknown, so `work` must send the same changes every time.
 */
function commitInSession(client: CommitdClient, job: Job): Promise<CommittedReply> {
  const changes = changesOf(job);
  return client.withSession(
    job.id,
    async (session) => {
      for (const [store, storeChanges] of Object.entries(changes)) await session.apply(store, storeChanges);
    },
    { stores: Object.keys(changes) },
  );
}

/** The stores the jobs need; `audit` is registered when the server lacks it (a relative path lands in its data dir). */
async function ensureStores(url: string, token: string | undefined): Promise<void> {
  // One attempt: at start-up an unreachable server is a mistake to report, not to wait out.
  const setup = new CommitdClient({ url, token, retry: { maxAttempts: 1 } });
  const names = new Set((await setup.listStores()).map((store) => store.name));
  if (!names.has('main')) throw new Error(`commitd at ${url} has no store "main" (npm start configures it)`);
  if (!names.has('audit')) {
    await setup.addStore({ name: 'audit', type: 'sqlite', options: { path: 'audit.db' } });
    console.error('registered store "audit" (sqlite, audit.db in the data dir)');
  }
}

async function main(): Promise<number> {
  const { values } = parseArgs({ options: { sessions: { type: 'boolean', default: false } } });
  const url = process.env.COMMITD_URL ?? 'http://127.0.0.1:8080';
  const token = process.env.COMMITD_TOKEN;
  await ensureStores(url, token);
  const client = new CommitdClient({
    url,
    token,
    onRetry: ({ operation, key, retry, delayMs, error }) =>
      console.error(`retry ${retry} of ${operation} ${key ?? ''} in ${delayMs} ms: ${error instanceof Error ? error.message : String(error)}`),
  });
  const run = values.sessions ? commitInSession : commitOnce;

  await client.commit(SCHEMA);
  let failed = 0;
  for await (const line of createInterface({ input: process.stdin })) {
    if (line.trim() === '') continue;
    const job = parseJob(line);
    if (job === undefined) continue;
    try {
      const result = await run(client, job);
      console.log(`${job.id} committed ${result.sessionId}`);
    } catch (error) {
      // Retries are spent, or the server refused the job (a store conflict, a reused key):
      // report it and go on; feeding the job again later is safe.
      if (!(error instanceof CommitdClientError)) throw error;
      failed++;
      console.error(`${job.id} failed: ${error.message}`);
    }
  }
  return failed === 0 ? 0 : 1;
}

process.exitCode = await main().catch((error: unknown) => {
  // One line, no stack trace: what went wrong and, for an unreachable server, what to do.
  const why = error instanceof Error ? error.message : String(error);
  console.error(error instanceof CommitdNetworkError ? `worker: ${why} (is commitd running? npm start)` : `worker: ${why}`);
  return 1;
});

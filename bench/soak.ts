/**
 * The soak: concurrent sessions against a commitd process on a harness etcd while commitd
 * is SIGKILLed (and restarted) and etcd is SIGKILLed (and restarted) at random. Workers
 * retry each key, with the same changes, until it is committed (bounded). At the end every
 * key is checked in both sqlite stores, and the counter against the sessions that bumped it.
 *
 *   npm run soak                 # 180 s
 *   npm run soak -- --seconds 60 --workers 6
 *
 * Prints `attempted, committed, lost, duplicated` and exits non-zero unless lost = 0 and
 * duplicated = 0 (and the counter agrees). Not part of `npm test`.
 * @module
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import Database from 'better-sqlite3';
import { makeTempDir, removeTempDir } from '../test/harness/child.ts';
import { startEtcd, type EtcdServer } from '../test/harness/etcd.ts';
import { startProcess, type ProcessService, type ProcessServiceOptions } from '../test/support/process.ts';

const { values: args } = parseArgs({
  options: {
    seconds: { type: 'string', default: '180' },
    workers: { type: 'string', default: '6' },
    /** Mean seconds between two faults. */
    'fault-every': { type: 'string', default: '8' },
  },
});
const SECONDS = Number(args.seconds);
const WORKERS = Number(args.workers);
const FAULT_EVERY_MS = Number(args['fault-every']) * 1000;
/** After the run, how long unfinished keys may keep retrying before they count as given up. */
const DRAIN_MS = 60_000;
/** Per key: attempts before a worker gives up on it (it still counts if recovery commits it). */
const MAX_ATTEMPTS = 400;
if (!(SECONDS > 0) || !(WORKERS > 0) || !(FAULT_EVERY_MS > 0)) throw new Error('--seconds, --workers and --fault-every must be positive numbers');

type Mode = 'one-shot' | 'interactive';
interface KeyState {
  readonly key: string;
  readonly mode: Mode;
  readonly counter: boolean;
  /** Set when commitd answered `committed` for the key. */
  acknowledged: boolean;
  attempts: number;
}
interface Reply {
  readonly status: number;
  readonly body: Record<string, unknown>;
}

const log = (message: string) => process.stdout.write(`[${new Date().toISOString().slice(11, 23)}] ${message}\n`);

const root = makeTempDir('soak');
const storePaths = { s1: join(root, 'stores', 's1.db'), s2: join(root, 'stores', 's2.db') };
mkdirSync(join(root, 'stores'), { recursive: true });
mkdirSync(join(root, 'commitd'), { recursive: true });
for (const path of Object.values(storePaths)) {
  const db = new Database(path);
  db.exec('CREATE TABLE t(k TEXT, n INTEGER)');
  db.exec('CREATE TABLE counter(id INTEGER PRIMARY KEY, v INTEGER NOT NULL)');
  db.exec('INSERT INTO counter(id, v) VALUES (1, 0)');
  db.close();
}

let etcd: EtcdServer | undefined;
let commitd: ProcessService | undefined;
let options: ProcessServiceOptions;
const keys: KeyState[] = [];
const unexpected: string[] = [];
const faults = { commitdKills: 0, etcdKills: 0 };
let running = true;

/** The changes of a key: a row in each store, and on some keys a (non-idempotent) counter bump. */
function changesOf(state: KeyState): Record<string, unknown[]> {
  const s1: unknown[] = [{ sql: 'INSERT INTO t(k, n) VALUES (?, ?)', params: [state.key, 1] }];
  if (state.counter) s1.push({ sql: 'UPDATE counter SET v = v + 1 WHERE id = 1' });
  return { s1, s2: [{ sql: 'INSERT INTO t(k, n) VALUES (?, ?)', params: [state.key, 2] }] };
}

/** One request to the current commitd; `undefined` when it is down or the connection dropped. */
async function call(method: string, path: string, body?: unknown): Promise<Reply | undefined> {
  const target = commitd;
  if (!target) return undefined;
  try {
    const res = await fetch(`${target.url}${path}`, {
      method,
      headers: body === undefined ? {} : { 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(30_000),
    });
    const reply = { status: res.status, body: (await res.json()) as Record<string, unknown> };
    if (reply.status >= 500 && reply.status !== 503) unexpected.push(`${method} ${path}: ${reply.status} ${JSON.stringify(reply.body)}`);
    if (reply.status === 503 && !res.headers.get('retry-after')) unexpected.push(`${method} ${path}: 503 without Retry-After`);
    return reply;
  } catch {
    return undefined;
  }
}

const committed = (reply: Reply | undefined) => reply?.status === 200 && reply.body.state === 'committed';

/** One attempt at a key; true once commitd answered it committed. */
async function attempt(state: KeyState): Promise<boolean> {
  const changes = changesOf(state);
  if (state.mode === 'one-shot') return committed(await call('POST', '/v1/commits', { key: state.key, changes }));
  // Interactive: begin answers `committed` for a finished key, resumes or restarts otherwise.
  const begun = await call('POST', '/v1/sessions', { key: state.key, stores: Object.keys(changes) });
  if (committed(begun)) return true;
  if (begun?.body.state !== 'active') return false;
  for (const [store, list] of Object.entries(changes)) {
    const applied = await call('POST', `/v1/sessions/${state.key}/changes`, { store, changes: list });
    if (applied?.status !== 200) return false;
  }
  return committed(await call('POST', `/v1/sessions/${state.key}/commit`));
}

async function worker(w: number, stopAt: () => number): Promise<void> {
  for (let n = 0; running && Date.now() < stopAt(); n++) {
    const state: KeyState = {
      key: `soak-${w}-${n}`,
      mode: Math.random() < 0.5 ? 'one-shot' : 'interactive',
      counter: Math.random() < 0.3,
      acknowledged: false,
      attempts: 0,
    };
    keys.push(state);
    // A key once started is finished (or given up) even past the end of the run: that is the drain.
    while (running && state.attempts < MAX_ATTEMPTS) {
      state.attempts++;
      if (await attempt(state)) {
        state.acknowledged = true;
        break;
      }
      await sleep(Math.min(1000, 50 * state.attempts));
    }
  }
}

async function startCommitd(): Promise<void> {
  for (let tries = 1; ; tries++) {
    try {
      commitd = await startProcess(options);
      return;
    } catch (err) {
      // etcd may be down or its breaker open: commitd exits at start-up; try again.
      if (tries >= 20) throw err;
      await sleep(1000);
    }
  }
}

async function chaos(until: number): Promise<void> {
  while (Date.now() < until) {
    await sleep(FAULT_EVERY_MS / 2 + Math.random() * FAULT_EVERY_MS);
    if (Date.now() >= until) break;
    if (Math.random() < 0.6) {
      log('fault: SIGKILL commitd, restart it');
      faults.commitdKills++;
      const victim = commitd;
      commitd = undefined;
      await victim?.process.kill('SIGKILL');
      await startCommitd();
    } else {
      const downMs = 1000 + Math.random() * 2000;
      log(`fault: SIGKILL etcd for ${Math.round(downMs)} ms`);
      faults.etcdKills++;
      await etcd?.kill('SIGKILL');
      await sleep(downMs);
      await etcd?.restart();
    }
  }
}

function countRows(path: string): Map<string, number> {
  const db = new Database(path, { readonly: true });
  try {
    const counts = new Map<string, number>();
    for (const row of db.prepare('SELECT k, count(*) AS n FROM t GROUP BY k').all() as { k: string; n: number }[]) counts.set(row.k, row.n);
    return counts;
  } finally {
    db.close();
  }
}

function counterValue(path: string): number {
  const db = new Database(path, { readonly: true });
  try {
    return (db.prepare('SELECT v FROM counter WHERE id = 1').get() as { v: number }).v;
  } finally {
    db.close();
  }
}

async function main(): Promise<number> {
  etcd = await startEtcd();
  options = {
    dir: join(root, 'commitd'),
    stores: Object.entries(storePaths).map(([name, path]) => ({ name, type: 'sqlite', options: { path } })),
    etcd: { endpoints: etcd.endpoints, namespace: '/soak/' },
    config: { sessionIdleTimeout: '5s', recoveryInterval: '1s' },
  };
  await startCommitd();
  const endAt = Date.now() + SECONDS * 1000;
  log(`soak: ${SECONDS} s, ${WORKERS} workers, a fault every ~${FAULT_EVERY_MS / 1000} s`);
  const workers = Array.from({ length: WORKERS }, (_, w) => worker(w, () => endAt));
  await chaos(endAt);
  log('faults over; draining unfinished keys');
  const drainTimer = setTimeout(() => {
    running = false;
  }, DRAIN_MS);
  await Promise.all(workers);
  clearTimeout(drainTimer);
  // Let recovery finish what the last faults left (keys given up may still commit).
  await sleep(3000);

  const rows = Object.values(storePaths).map(countRows);
  const acknowledged = keys.filter((k) => k.acknowledged);
  const lost = acknowledged.filter((k) => rows.some((perStore) => (perStore.get(k.key) ?? 0) === 0));
  const duplicated = keys.filter((k) => rows.some((perStore) => (perStore.get(k.key) ?? 0) > 1));
  const partial = keys.filter((k) => !k.acknowledged && new Set(rows.map((perStore) => Math.min(1, perStore.get(k.key) ?? 0))).size > 1);
  const counterExpected = keys.filter((k) => k.counter && (rows[0]?.get(k.key) ?? 0) > 0).length;
  const counterFound = counterValue(storePaths.s1);
  const unconfirmed: string[] = [];
  for (const k of acknowledged) {
    const shown = await call('GET', `/v1/sessions/${k.key}`);
    if (shown?.body.state !== 'committed') unconfirmed.push(k.key);
  }

  const summary = {
    attempted: keys.length,
    committed: acknowledged.length,
    lost: lost.length,
    duplicated: duplicated.length,
    givenUp: keys.length - acknowledged.length,
    partial: partial.length,
    counter: { expected: counterExpected, found: counterFound },
    unconfirmedByGet: unconfirmed.length,
    unexpectedAnswers: unexpected.length,
    faults,
  };
  process.stdout.write(`attempted ${summary.attempted}, committed ${summary.committed}, lost ${summary.lost}, duplicated ${summary.duplicated}\n`);
  process.stdout.write(`${JSON.stringify(summary)}\n`);
  for (const line of unexpected.slice(0, 10)) process.stdout.write(`unexpected: ${line}\n`);
  for (const k of [...lost, ...duplicated].slice(0, 10))
    process.stdout.write(`bad key: ${k.key} (${k.mode}) rows ${rows.map((r) => r.get(k.key) ?? 0).join('/')}\n`);
  const ok = lost.length === 0 && duplicated.length === 0 && counterFound === counterExpected;
  return ok ? 0 : 1;
}

let code = 1;
try {
  code = await main();
} catch (err) {
  process.stderr.write(`soak failed: ${err instanceof Error ? err.stack : String(err)}\n`);
} finally {
  running = false;
  await commitd?.process.kill('SIGKILL').catch(() => undefined);
  await etcd?.cleanup().catch(() => undefined);
  await removeTempDir(root);
}
process.exit(code);

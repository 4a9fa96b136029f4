/**
 * `npm run bench`: commitd against its floor, with its own etcd (the test harness).
 *
 * For each pass (a KV mode, on disk or on tmpfs) and each concurrency it runs, interleaved
 * round after round for the same window: the in-process floor (`floor.ts`, in this
 * process), the same I/O with the stores' locks held across the commit point ("held"), and
 * commitd as a child process over HTTP with a keep-alive client (in this process). Cells
 * report the median over rounds; the ratio is the median of each round's commitd/floor,
 * which pairs measurements taken seconds apart on a shared, noisy machine. Then: the
 * hashing microbenchmark, the KV round trips per one-shot session (counted on a real run),
 * CPU profiles of the server, and its resident memory after 10k and 100k sessions.
 * Prints a table on stdout, progress on stderr, and writes `bench/results.json`.
 *
 * Settings (environment): BENCH_SECONDS (measured window per cell, 2.5), BENCH_WARMUP
 * (0.5), BENCH_ROUNDS (4), BENCH_CONCURRENCY ("1,16,64"), BENCH_MODES ("etcd,embedded":
 * data on disk), BENCH_TMPFS_MODES ("embedded": data on /dev/shm, fsync free; "" skips),
 * BENCH_PAYLOAD (bytes per row, 100), BENCH_RSS_SESSIONS ("10000,100000"; "0" skips),
 * BENCH_RSS_CONCURRENCY (64), BENCH_PROFILE (1; 0 skips), BENCH_PROFILE_CONCURRENCY (16),
 * BENCH_OUT (bench/results.json).
 * @module
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import type { Kv } from '../src/kv/kv.ts';
import { EtcdKv } from '../src/kv/etcd.ts';
import { SqliteKv } from '../src/kv/sqlite.ts';
import { startEtcd, type EtcdServer } from '../test/harness/etcd.ts';
import { KeepAliveClient } from './client.ts';
import { Floor } from './floor.ts';
import { benchHashing, hashingSink, type HashingResult } from './hashing.ts';
import { quantile, runClosedLoop, runCount, type LoadResult } from './load.ts';
import { profileClockUs, summariseProfile, type ProfileSummary } from './profile.ts';
import { startCommitd, type CommitdProcess } from './server.ts';
import { chartSvg, type ChartPoint } from './chart.ts';
import { ServicesFloor, serviceBody, serviceStoreDefinitions, startServices, type Services } from './services.ts';
import { STORE_NAMES, createStoreFile, keyOf, oneShotBody, payloadOf } from './workload.ts';

type Mode = 'etcd' | 'embedded';
type Medium = 'disk' | 'tmpfs';
/** What a session writes: two sqlite stores, or a PostgreSQL and a Redis store. */
type Workload = 'sqlite' | 'services';

/** One KV mode with its data (store files, embedded KV) on one medium. */
interface Pass {
  readonly name: string;
  readonly mode: Mode;
  readonly medium: Medium;
  readonly workload?: Workload;
}

const env = process.env;
const list = (value: string) => value.split(',').filter(Boolean);
const settings = {
  cellSeconds: Number(env.BENCH_SECONDS ?? 2.5),
  warmupSeconds: Number(env.BENCH_WARMUP ?? 0.5),
  /**
   * Load every variant runs once, before its first measured cell: a fresh commitd needs about
   * ten seconds of load before V8 has compiled its hot paths (CPU per session halves).
   */
  serverWarmupSeconds: Number(env.BENCH_SERVER_WARMUP ?? 12),
  rounds: Number(env.BENCH_ROUNDS ?? 4),
  concurrencies: list(env.BENCH_CONCURRENCY ?? '1,16,64').map(Number),
  modes: list(env.BENCH_MODES ?? 'etcd,embedded') as Mode[],
  tmpfsModes: list(env.BENCH_TMPFS_MODES ?? 'embedded') as Mode[],
  payloadBytes: Number(env.BENCH_PAYLOAD ?? 100),
  roundTripSessions: 200,
  rssCheckpoints: list(env.BENCH_RSS_SESSIONS ?? '10000,100000')
    .map(Number)
    .filter((n) => n > 0),
  rssConcurrency: Number(env.BENCH_RSS_CONCURRENCY ?? 64),
  profile: env.BENCH_PROFILE !== '0',
  profileConcurrency: Number(env.BENCH_PROFILE_CONCURRENCY ?? 16),
  profileSeconds: 10,
  hashingPayloads: [100, 10_000, 1_000_000],
  /** The realistic pass (etcd KV, a PostgreSQL and a Redis store); "0" skips it. */
  services: env.BENCH_SERVICES !== '0',
  /** Concurrencies of the two-instance cell (two commitd on one etcd); "" skips it. */
  twoInstances: list(env.BENCH_TWO_INSTANCES ?? '64').map(Number),
  /** A checkout of the code to compare against (A/B in the same run), e.g. a `git worktree`. */
  baseline: env.BENCH_BASELINE,
  chart: env.BENCH_CHART ?? new URL('../docs/performance.svg', import.meta.url).pathname,
  out: env.BENCH_OUT ?? new URL('./results.json', import.meta.url).pathname,
};

const began = performance.now();
function progress(message: string): void {
  process.stderr.write(`[bench ${((performance.now() - began) / 1000).toFixed(0).padStart(4)} s] ${message}\n`);
}

const run = Date.now().toString(36);
/** A pass name as part of an idempotency key (letters and digits only). */
const keyPart = (name: string) => name.replace(/[^A-Za-z0-9]/g, '');
const payload = payloadOf(settings.payloadBytes);
const mib = (bytes: number) => Math.round(bytes / 1024 / 102.4) / 10;
const round1 = (value: number) => Math.round(value * 10) / 10;
const round2 = (value: number) => Math.round(value * 100) / 100;
const median = (values: readonly number[]) => {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = sorted.length / 2;
  return Number.isInteger(middle) && sorted.length > 0 ? ((sorted[middle - 1] as number) + (sorted[middle] as number)) / 2 : quantile(sorted, 0.5);
};

/** Where a pass keeps its files: the OS temp dir (on disk here) or /dev/shm. */
const roots: Record<Medium, string> = {
  disk: mkdtempSync(join(os.tmpdir(), 'commitd-bench-')),
  tmpfs: mkdtempSync(join(existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir(), 'commitd-bench-')),
};
const removeRoots = () => {
  for (const root of Object.values(roots)) rmSync(root, { recursive: true, force: true });
};
process.on('exit', removeRoots);

/** One row of the table: a pass at one concurrency. Rates and latencies: medians over rounds. */
interface Cell {
  /** Floor sessions/s (stores' transactions back to back after the commit point). */
  readonly floor: number;
  /** The same I/O with the stores' write locks held across the commit point. */
  readonly floorHeld: number;
  /** commitd sessions/s over HTTP. */
  readonly commitd: number;
  /** Median of the rounds' commitd/floor. */
  readonly ratio: number;
  /** Median of the rounds' commitd/floorHeld. */
  readonly ratioHeld: number;
  /** commitd latency, ms. */
  readonly p50: number;
  readonly p99: number;
  readonly floorP50: number;
  readonly floorP99: number;
  /** Server VmRSS after the cell's last round, MiB. */
  readonly rss: number;
  /**
   * CPU time per session, µs (medians over rounds): the floor's (this process), commitd's
   * (the server process, all threads), and the HTTP client's (this process, commitd cells).
   * Less sensitive than sessions/s to what the rest of a shared machine does.
   */
  readonly floorCpuUs: number;
  readonly commitdCpuUs: number;
  readonly clientCpuUs: number;
  readonly errors: number;
  /** Each round's sessions/s, in order: floor, floorHeld, commitd. */
  readonly rounds: readonly (readonly [number, number, number])[];
  /** The baseline code (`BENCH_BASELINE`), run in the same rounds: sessions/s, p99, CPU µs. */
  readonly baseline?: { readonly perSecond: number; readonly p99: number; readonly cpuUs: number; readonly ratio: number; readonly vsBaseline: number };
}

interface PassResult {
  readonly mode: Mode;
  readonly medium: Medium;
  /** KV operations per one-shot session, counted on a real run (background ones included). */
  readonly roundTrips: { readonly commitd: Record<string, number>; readonly floor: Record<string, number> };
  readonly cells: Record<string, Cell>;
}

/** Counts KV operations by name through the backends' `onOperation`. */
class OperationCounter {
  readonly counts = new Map<string, number>();
  readonly record = (op: string) => this.counts.set(op, (this.counts.get(op) ?? 0) + 1);
  snapshot(): Map<string, number> {
    return new Map(this.counts);
  }
}

/** Per-session operation counts between two snapshots. */
function perSession(before: Map<string, number>, after: Map<string, number>, sessions: number): Record<string, number> {
  const result: Record<string, number> = {};
  for (const [op, count] of after) {
    const delta = count - (before.get(op) ?? 0);
    if (delta > 0) result[op] = round2(delta / sessions);
  }
  return result;
}

function openFloorKv(mode: Mode, etcd: EtcdServer | undefined, dir: string, counter: OperationCounter): Kv {
  if (mode === 'etcd') {
    if (!etcd) throw new Error('etcd mode needs etcd');
    // maxGroup 1: the floor is each session on its own (no group commit).
    return new EtcdKv({ endpoints: etcd.endpoints, namespace: `/bench-floor-${run}-${dir.split('/').at(-2)}/`, onOperation: counter.record, maxGroup: 1 });
  }
  return new SqliteKv({ path: join(dir, 'coordinator.db'), onOperation: counter.record, maxGroup: 1 });
}

function storeFiles(dir: string): Record<string, string> {
  mkdirSync(dir, { recursive: true });
  const files = Object.fromEntries(STORE_NAMES.map((name) => [name, join(dir, `${name}.db`)]));
  for (const path of Object.values(files)) createStoreFile(path);
  return files;
}

let servers = 0;
interface LaunchOptions {
  readonly cpuProfileDir?: string;
  readonly services?: Services;
  readonly sourceDir?: string;
  readonly cpus?: string;
}
async function launchCommitd(mode: Mode, etcd: EtcdServer | undefined, dir: string, options: LaunchOptions = {}): Promise<CommitdProcess> {
  servers += 1;
  mkdirSync(dir, { recursive: true });
  return startCommitd({
    dir,
    stores: options.services ? {} : storeFiles(dir),
    ...(options.services ? { storeDefinitions: serviceStoreDefinitions(options.services) } : {}),
    ...(mode === 'etcd' && etcd ? { etcd: { endpoints: etcd.endpoints, namespace: `/bench-commitd-${run}-${servers}/` } } : {}),
    ...(options.cpuProfileDir ? { cpuProfileDir: options.cpuProfileDir } : {}),
    ...(options.sourceDir ? { sourceDir: options.sourceDir } : {}),
    ...(options.cpus ? { cpus: options.cpus } : {}),
  });
}

type Body = (key: string, payload: string) => unknown;

/** One session through commitd: `POST /v1/commits`, expecting 200 committed. */
function commitdSession(client: KeepAliveClient, cell: string, body: Body = oneShotBody): (n: number) => Promise<void> {
  return async (n) => {
    const reply = await client.post('/v1/commits', body(keyOf(run, cell, n), payload));
    if (reply.status !== 200) throw new Error(`HTTP ${reply.status}: ${reply.body.slice(0, 300)}`);
  };
}

/** Sessions spread over several instances, in turn. */
function spreadSessions(clients: readonly KeepAliveClient[], cell: string, body: Body): (n: number) => Promise<void> {
  const sessions = clients.map((client) => commitdSession(client, cell, body));
  return (n) => (sessions[n % sessions.length] as (n: number) => Promise<void>)(n);
}

function floorSession(floor: { session(key: string, payload: string): Promise<void> }, cell: string): (n: number) => Promise<void> {
  return (n) => floor.session(keyOf(run, cell, n), payload);
}

function cellLoad(concurrency: number, session: (n: number) => Promise<void>): Promise<LoadResult> {
  return runClosedLoop({ concurrency, warmupMs: settings.warmupSeconds * 1000, durationMs: settings.cellSeconds * 1000, session });
}

function describeLoad(result: LoadResult): string {
  const errors = result.errors > 0 ? `, ${result.errors} errors (${result.firstError})` : '';
  return `${result.perSecond.toFixed(0).padStart(5)}/s  p50 ${result.p50Ms.toFixed(2)} ms  p99 ${result.p99Ms.toFixed(2)} ms${errors}`;
}

const benchCpu = () => {
  const usage = process.cpuUsage();
  return usage.user + usage.system;
};

/** One variant of a cell: how to run a session, and whose CPU to charge. */
interface Variant {
  readonly name: 'floor' | 'held' | 'commitd' | 'baseline';
  readonly session: (cell: string) => (n: number) => Promise<void>;
  /** CPU time so far of whoever does the work, µs. */
  readonly cpu?: () => number;
}

/**
 * Runs every variant under load for `serverWarmupSeconds` (16 in flight), so that no cell
 * measures a process whose hot paths V8 has not compiled yet.
 */
async function warmUp(label: string, variants: readonly Variant[]): Promise<void> {
  if (settings.serverWarmupSeconds <= 0) return;
  for (const variant of variants) {
    const load = await runClosedLoop({
      concurrency: 16,
      warmupMs: 0,
      durationMs: settings.serverWarmupSeconds * 1000,
      session: variant.session(`${keyPart(label)}-${variant.name}-warm`),
    });
    progress(`${label} warm-up ${variant.name.padEnd(8)} ${describeLoad(load)}`);
  }
}

/** Runs `variants` at every concurrency for the configured rounds, taking turns. */
async function runRounds(label: string, concurrencies: readonly number[], variants: readonly Variant[], rssOf?: () => number) {
  type Samples = { loads: LoadResult[]; cpu: number[]; client: number[] };
  const results = new Map<number, Map<string, Samples>>(
    concurrencies.map((c) => [c, new Map(variants.map((variant) => [variant.name, { loads: [], cpu: [], client: [] }]))]),
  );
  const rss = new Map<number, number>();
  for (let round = 1; round <= settings.rounds; round++) {
    for (const concurrency of concurrencies) {
      // The variants take turns going first, so no one of them always runs after the same neighbour.
      for (let turn = 0; turn < variants.length; turn++) {
        const variant = variants[(turn + round - 1) % variants.length] as Variant;
        const samples = results.get(concurrency)?.get(variant.name) as Samples;
        const workBefore = variant.cpu?.();
        const clientBefore = benchCpu();
        const load = await cellLoad(concurrency, variant.session(`${keyPart(label)}-${variant.name}-c${concurrency}-r${round}`));
        if (variant.cpu && workBefore !== undefined) samples.cpu.push((variant.cpu() - workBefore) / load.completed);
        samples.client.push((benchCpu() - clientBefore) / load.completed);
        progress(`${label} c=${concurrency} round ${round}/${settings.rounds} ${variant.name.padEnd(8)} ${describeLoad(load)}`);
        samples.loads.push(load);
      }
      if (rssOf) rss.set(concurrency, rssOf());
    }
  }
  return { results, rss };
}

async function benchPass(pass: Pass, etcd: EtcdServer | undefined, services: Services | undefined): Promise<PassResult> {
  const dir = join(roots[pass.medium], keyPart(pass.name));
  const floorDir = join(dir, 'floor');
  const counter = new OperationCounter();
  const kv = openFloorKv(pass.mode, etcd, floorDir, counter);
  const workload = pass.workload ?? 'sqlite';
  const body: Body = workload === 'services' ? serviceBody : oneShotBody;
  const maxConcurrency = Math.max(...settings.concurrencies);
  const closers: (() => unknown)[] = [() => kv.close()];
  let floor: { session(key: string, payload: string): Promise<void> };
  let held: Floor | undefined;
  if (workload === 'services') {
    const servicesFloor = new ServicesFloor(kv, services as Services, maxConcurrency);
    closers.push(() => servicesFloor.close());
    floor = servicesFloor;
  } else {
    const floorStores = Object.values(storeFiles(floorDir));
    const backToBack = new Floor({ kv, storePaths: floorStores, order: 'back-to-back' });
    held = new Floor({ kv, storePaths: floorStores, order: 'held' });
    const heldFloor = held;
    closers.push(
      () => backToBack.close(),
      () => heldFloor.close(),
    );
    floor = backToBack;
  }
  progress(`${pass.name}: starting commitd`);
  const launch = (name: string, options: LaunchOptions = {}) =>
    launchCommitd(pass.mode, etcd, join(dir, name), { ...options, ...(services && workload === 'services' ? { services } : {}) });
  const server = await launch('commitd');
  const client = new KeepAliveClient(server.url, maxConcurrency);
  closers.push(
    () => client.close(),
    () => server.stop(),
  );
  try {
    const baseline = settings.baseline ? await launch('baseline', { sourceDir: settings.baseline }) : undefined;
    const baselineClient = baseline ? new KeepAliveClient(baseline.url, maxConcurrency) : undefined;
    if (baseline && baselineClient)
      closers.push(
        () => baselineClient.close(),
        () => baseline.stop(),
      );
    const variants: Variant[] = [
      { name: 'floor', session: (cell) => floorSession(floor, cell), cpu: benchCpu },
      ...(held ? [{ name: 'held' as const, session: (cell: string) => floorSession(held as Floor, cell) }] : []),
      { name: 'commitd', session: (cell) => commitdSession(client, cell, body), cpu: server.cpuMicros },
      ...(baseline && baselineClient
        ? [{ name: 'baseline' as const, session: (cell: string) => commitdSession(baselineClient, cell, body), cpu: baseline.cpuMicros }]
        : []),
    ];
    await warmUp(pass.name, variants);
    // Round trips per one-shot session, one session at a time so background work stands out.
    const sessions = settings.roundTripSessions;
    const serverBefore = await server.kvOperations();
    const counted = await runCount({ concurrency: 1, total: sessions, session: commitdSession(client, `${keyPart(pass.name)}-rt`, body) });
    const commitdTrips = perSession(serverBefore, await server.kvOperations(), sessions);
    const floorBefore = counter.snapshot();
    const floorCounted = await runCount({ concurrency: 1, total: sessions, session: floorSession(floor, `${keyPart(pass.name)}-rtf`) });
    const floorTrips = perSession(floorBefore, counter.snapshot(), sessions);
    for (const outcome of [counted, floorCounted]) {
      if (outcome.errors > 0)
        throw new Error(`${pass.name}: ${outcome.errors} of ${sessions} sessions failed while counting round trips: ${outcome.firstError}`);
    }
    progress(`${pass.name}: KV operations per one-shot session: commitd ${JSON.stringify(commitdTrips)}, floor ${JSON.stringify(floorTrips)}`);
    const { results, rss } = await runRounds(pass.name, settings.concurrencies, variants, () => server.rssBytes());
    const cells: Record<string, Cell> = {};
    for (const [concurrency, byVariant] of results) {
      const of = (name: Variant['name']) => byVariant.get(name);
      const floorLoads = of('floor')?.loads ?? [];
      const heldLoads = of('held')?.loads ?? [];
      const mine = of('commitd') as { loads: LoadResult[]; cpu: number[]; client: number[] };
      const rate = (loads: LoadResult[]) => median(loads.map((load) => load.perSecond));
      const ratios = (loads: LoadResult[], base: LoadResult[]) => median(loads.map((load, i) => load.perSecond / (base[i] as LoadResult).perSecond));
      const errors = [...byVariant.values()].reduce((sum, samples) => sum + samples.loads.reduce((n, load) => n + load.errors, 0), 0);
      const base = of('baseline');
      cells[String(concurrency)] = {
        floor: Math.round(rate(floorLoads)),
        floorHeld: heldLoads.length > 0 ? Math.round(rate(heldLoads)) : Number.NaN,
        commitd: Math.round(rate(mine.loads)),
        ratio: round2(ratios(mine.loads, floorLoads)),
        ratioHeld: heldLoads.length > 0 ? round2(ratios(mine.loads, heldLoads)) : Number.NaN,
        p50: round2(median(mine.loads.map((load) => load.p50Ms))),
        p99: round2(median(mine.loads.map((load) => load.p99Ms))),
        floorP50: round2(median(floorLoads.map((load) => load.p50Ms))),
        floorP99: round2(median(floorLoads.map((load) => load.p99Ms))),
        rss: mib(rss.get(concurrency) ?? 0),
        floorCpuUs: Math.round(median(of('floor')?.cpu ?? [])),
        commitdCpuUs: Math.round(median(mine.cpu)),
        clientCpuUs: Math.round(median(mine.client)),
        errors,
        rounds: mine.loads.map((load, i) => [
          Math.round((floorLoads[i] as LoadResult).perSecond),
          heldLoads[i] ? Math.round((heldLoads[i] as LoadResult).perSecond) : Number.NaN,
          Math.round(load.perSecond),
        ]),
        ...(base
          ? {
              baseline: {
                perSecond: Math.round(rate(base.loads)),
                p99: round2(median(base.loads.map((load) => load.p99Ms))),
                cpuUs: Math.round(median(base.cpu)),
                ratio: round2(ratios(base.loads, floorLoads)),
                vsBaseline: round2(ratios(mine.loads, base.loads)),
              },
            }
          : {}),
      };
    }
    return { mode: pass.mode, medium: pass.medium, roundTrips: { commitd: commitdTrips, floor: floorTrips }, cells };
  } finally {
    for (const close of closers.reverse()) await close();
  }
}

/**
 * Two commitd instances on one etcd against one instance, in the same rounds. With
 * `taskset` and at least two CPUs each instance has a core of its own (the single one the
 * first core); etcd, the servers and this process share both. `pg+redis`: every instance
 * drives the same PostgreSQL and Redis stores. `sqlite`: every instance has its own two
 * sqlite store files (a deployment sharded by store, one etcd): only the KV is shared.
 */
async function benchTwoInstances(etcd: EtcdServer, services: Services, workload: 'pg+redis' | 'sqlite') {
  const dir = join(roots.disk, `two-instances-${workload === 'sqlite' ? 'sqlite' : 'services'}`);
  const pin = os.cpus().length >= 2 && existsSync('/usr/bin/taskset');
  const body: Body = workload === 'sqlite' ? oneShotBody : serviceBody;
  const launch = (name: string, cpus: string) =>
    launchCommitd('etcd', etcd, join(dir, name), { ...(workload === 'sqlite' ? {} : { services }), ...(pin ? { cpus } : {}) });
  const one = await launch('one', '0');
  const pair = [await launch('pair-0', '0'), await launch('pair-1', '1')];
  const maxConcurrency = Math.max(...settings.twoInstances);
  const oneClient = new KeepAliveClient(one.url, maxConcurrency);
  const pairClients = pair.map((server) => new KeepAliveClient(server.url, maxConcurrency));
  try {
    // Warm every server up (JIT, store connections) before the first measured round.
    await warmUp(
      `two instances (${workload})`,
      [oneClient, ...pairClients].map((client, i) => ({ name: 'commitd', session: (cell: string) => commitdSession(client, `${cell}-${i}`, body) })),
    );
    const variants: Variant[] = [
      { name: 'floor', session: (cell) => commitdSession(oneClient, cell, body), cpu: one.cpuMicros },
      {
        name: 'commitd',
        session: (cell) => spreadSessions(pairClients, cell, body),
        cpu: () => pair.reduce((sum, server) => sum + server.cpuMicros(), 0),
      },
    ];
    const { results } = await runRounds(`two instances (${workload})`, settings.twoInstances, variants);
    const cells: Record<string, unknown> = {};
    for (const [concurrency, byVariant] of results) {
      const single = byVariant.get('floor')?.loads ?? [];
      const double = byVariant.get('commitd')?.loads ?? [];
      cells[String(concurrency)] = {
        oneInstance: Math.round(median(single.map((load) => load.perSecond))),
        twoInstances: Math.round(median(double.map((load) => load.perSecond))),
        scaling: round2(median(double.map((load, i) => load.perSecond / (single[i] as LoadResult).perSecond))),
        oneP99: round2(median(single.map((load) => load.p99Ms))),
        twoP99: round2(median(double.map((load) => load.p99Ms))),
        oneCpuUs: Math.round(median(byVariant.get('floor')?.cpu ?? [])),
        twoCpuUs: Math.round(median(byVariant.get('commitd')?.cpu ?? [])),
        errors: [...single, ...double].reduce((n, load) => n + load.errors, 0),
        rounds: double.map((load, i) => [Math.round((single[i] as LoadResult).perSecond), Math.round(load.perSecond)]),
      };
    }
    return { workload, pinned: pin ? 'taskset -c 0 (one instance); -c 0 and -c 1 (two)' : 'not pinned (taskset or a second CPU missing)', cells };
  } finally {
    oneClient.close();
    for (const client of pairClients) client.close();
    await Promise.all([one, ...pair].map((server) => server.stop()));
  }
}

/** Resident memory of a fresh embedded-KV server on tmpfs after each checkpoint of sessions. */
async function benchMemory() {
  const checkpoints = [...settings.rssCheckpoints].sort((a, b) => a - b);
  const total = checkpoints.at(-1) as number;
  const step = Math.max(1000, Math.floor(total / 20));
  progress(`memory: ${total} one-shot sessions on a fresh commitd (embedded KV on tmpfs, ${settings.rssConcurrency} in flight)`);
  const server = await launchCommitd('embedded', undefined, join(roots.tmpfs, 'rss'));
  const client = new KeepAliveClient(server.url, settings.rssConcurrency);
  const startMiB = mib(server.rssBytes());
  const series: [sessions: number, rssMiB: number][] = [];
  const atCheckpoint = new Map<number, { rss: number; heap: Promise<{ used: number; external: number }> }>();
  try {
    const outcome = await runCount({
      concurrency: settings.rssConcurrency,
      total,
      session: commitdSession(client, 'rss'),
      onCompleted: (completed) => {
        if (checkpoints.includes(completed)) atCheckpoint.set(completed, { rss: server.rssBytes(), heap: server.heap() });
        if (completed % step === 0) {
          const rssMiB = mib(server.rssBytes());
          series.push([completed, rssMiB]);
          progress(`memory: ${completed} sessions, RSS ${rssMiB} MiB`);
        }
      },
    });
    if (outcome.errors > 0) progress(`memory: ${outcome.errors} sessions failed (${outcome.firstError})`);
    await new Promise((resolve) => setTimeout(resolve, 5000));
    const afterIdleMiB = mib(server.rssBytes());
    const samples = await Promise.all(
      checkpoints.map(async (n) => {
        const sample = atCheckpoint.get(n);
        const heap = sample ? await sample.heap : { used: Number.NaN, external: Number.NaN };
        return [String(n), { rssMiB: mib(sample?.rss ?? Number.NaN), heapUsedMiB: mib(heap.used), externalMiB: mib(heap.external) }] as const;
      }),
    );
    const first = atCheckpoint.get(checkpoints[0] as number)?.rss ?? Number.NaN;
    const last = atCheckpoint.get(total)?.rss ?? Number.NaN;
    return {
      mode: 'embedded',
      medium: 'tmpfs',
      concurrency: settings.rssConcurrency,
      payloadBytes: settings.payloadBytes,
      startMiB,
      checkpoints: Object.fromEntries(samples),
      growthPct: round1((100 * (last - first)) / first),
      afterIdleMiB,
      sessionsPerSecond: Math.round(outcome.completed / outcome.seconds),
      errors: outcome.errors,
      series,
    };
  } finally {
    client.close();
    await server.stop();
  }
}

type ProfileResult = ProfileSummary & {
  readonly pass: string;
  readonly concurrency: number;
  readonly seconds: number;
  readonly perSecond: number;
  /**
   * CPU the server used in the measured window, ms: its main thread (the profiled one) and
   * all its threads. The profile's busy time is wall time the main thread spent off idle,
   * which includes time it was runnable but off the CPU (on two cores, a woken store thread
   * can take the core it was on); busy far above `mainThreadCpuMs` says so.
   */
  readonly mainThreadCpuMs: number;
  readonly allThreadsCpuMs: number;
};

/** A CPU profile of the server under load; only the samples taken during the load count. */
async function benchProfile(pass: Pass, etcd: EtcdServer | undefined, concurrency = settings.profileConcurrency): Promise<ProfileResult> {
  const dir = join(roots[pass.medium], `profile-${pass.mode}-${concurrency}`);
  const profileDir = join(dir, 'cpuprofile');
  mkdirSync(profileDir, { recursive: true });
  const seconds = settings.profileSeconds;
  progress(`profile: commitd --cpu-prof, ${pass.name}, ${concurrency} in flight, ${seconds} s`);
  const server = await launchCommitd(pass.mode, etcd, join(dir, 'commitd'), { cpuProfileDir: profileDir });
  const client = new KeepAliveClient(server.url, concurrency);
  let load: LoadResult;
  const warmupMs = Math.max(1000, settings.serverWarmupSeconds * 1000);
  let window: { fromUs: number; toUs: number };
  const cpu = { main: 0, all: 0 };
  try {
    const startedUs = profileClockUs();
    // The same window as the profile's: from the warm-up's end to the load's.
    const windowOpens = setTimeout(() => {
      cpu.main = server.mainThreadCpuMicros();
      cpu.all = server.cpuMicros();
    }, warmupMs);
    load = await runClosedLoop({ concurrency, warmupMs, durationMs: seconds * 1000, session: commitdSession(client, `profile${keyPart(pass.name)}`) });
    clearTimeout(windowOpens);
    cpu.main = server.mainThreadCpuMicros() - cpu.main;
    cpu.all = server.cpuMicros() - cpu.all;
    window = { fromUs: startedUs + warmupMs * 1000, toUs: profileClockUs() };
  } finally {
    client.close();
    await server.stop();
  }
  // CPU.<date>.<time>.<pid>.<thread>.<seq>.cpuprofile: thread 0 is the main thread (tsx's loader is another).
  const file = readdirSync(profileDir).find((name) => /^CPU\.\d+\.\d+\.\d+\.0\.\d+\.cpuprofile$/.test(name));
  if (!file) throw new Error(`no CPU profile written in ${profileDir}`);
  const summary = summariseProfile(join(profileDir, file), window);
  const mainThreadCpuMs = Math.round(cpu.main / 1000);
  const allThreadsCpuMs = Math.round(cpu.all / 1000);
  progress(
    `profile: ${pass.name}: ${Math.round(load.perSecond)}/s, busy ${summary.busyMs} of ${summary.totalMs} ms; CPU ${mainThreadCpuMs} ms main thread, ${allThreadsCpuMs} ms all threads`,
  );
  return { ...summary, pass: pass.name, concurrency, seconds, perSecond: Math.round(load.perSecond), mainThreadCpuMs, allThreadsCpuMs };
}

/**
 * Indented JSON where arrays of scalars (or of such arrays) and objects of scalars each
 * take one line: a short file that still diffs line by line.
 */
function formatJson(value: unknown): string {
  // Only whitespace around newlines changes: JSON strings cannot contain a raw newline.
  const oneLine = (inner: string) =>
    inner
      .replace(/\[\n\s*/g, '[')
      .replace(/\s*\n\s*\]/g, ']')
      .replace(/\s*\n\s*/g, ' ');
  const text = JSON.stringify(value, null, 2)
    .replace(/\{\n\s+([^{}[\]]*?)\n\s+\}/g, (_, inner: string) => `{ ${oneLine(inner)} }`)
    .replace(/\[\n\s+((?:[^{}[\]]|\[[^{}[\]]*\])*?)\n\s+\]/g, (_, inner: string) => `[${oneLine(inner)}]`);
  return `${text}\n`;
}

/** The commit measured, `+dirty` when src/ has uncommitted changes; undefined outside git. */
function sourceCommit(): string | undefined {
  try {
    const head = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain', '--', 'src'], { encoding: 'utf8' }).trim() !== '';
    return dirty ? `${head}+dirty` : head;
  } catch {
    return undefined;
  }
}

/** Load average and CPU/IO pressure: how busy the shared machine was. */
function machineLoad(): { loadavg: number[]; cpuPressureSomeAvg60?: number; ioPressureSomeAvg60?: number } {
  const pressure = (kind: string) => {
    try {
      const match = /^some avg10=[\d.]+ avg60=([\d.]+)/m.exec(readFileSync(`/proc/pressure/${kind}`, 'utf8'));
      return match ? Number(match[1]) : undefined;
    } catch {
      return undefined;
    }
  };
  return { loadavg: os.loadavg().map(round2), cpuPressureSomeAvg60: pressure('cpu'), ioPressureSomeAvg60: pressure('io') };
}

function printTable(passes: Record<string, PassResult>): void {
  const header = [
    'pass',
    'conc',
    'floor/s',
    'held/s',
    'commitd/s',
    'ratio',
    'ratio(held)',
    'p50 ms',
    'p99 ms',
    'floor p50',
    'floor p99',
    'cpu µs floor',
    'cpu µs commitd',
    'rss MiB',
  ];
  const rows = [header];
  for (const [name, result] of Object.entries(passes)) {
    for (const [concurrency, cell] of Object.entries(result.cells)) {
      rows.push(
        [
          name,
          concurrency,
          cell.floor,
          cell.floorHeld,
          cell.commitd,
          cell.ratio,
          cell.ratioHeld,
          cell.p50,
          cell.p99,
          cell.floorP50,
          cell.floorP99,
          cell.floorCpuUs,
          cell.commitdCpuUs,
          cell.rss,
        ].map(String),
      );
    }
  }
  const widths = header.map((_, i) => Math.max(...rows.map((row) => (row[i] as string).length)));
  for (const row of rows)
    process.stdout.write(`${row.map((text, i) => (i < 1 ? text.padEnd(widths[i] as number) : text.padStart(widths[i] as number))).join('  ')}\n`);
}

function printHashing(results: readonly HashingResult[]): void {
  process.stdout.write('\nsession-ID hashing, MB/s of canonical bytes\n');
  process.stdout.write('payload   ChangeHasher.add  canonicalJson  xxh64 x1  xxh64 x2  full/hash\n');
  for (const r of results) {
    process.stdout.write(
      `${String(r.payloadBytes).padStart(7)}  ${r.changeHasherMBps.toFixed(1).padStart(16)}  ${r.canonicalJsonMBps.toFixed(1).padStart(13)}  ${r.xxh64MBps.toFixed(0).padStart(8)}  ${r.xxh64x2MBps.toFixed(0).padStart(8)}  ${r.overheadFactor.toFixed(1).padStart(8)}x\n`,
    );
  }
}

async function main(): Promise<void> {
  progress(`run ${run}: ${JSON.stringify(settings)}`);
  const loadBefore = machineLoad();
  progress('hashing microbenchmark');
  const hashing = benchHashing(settings.hashingPayloads, 1000).map((r) => ({
    ...r,
    changeHasherMBps: round1(r.changeHasherMBps),
    canonicalJsonMBps: round1(r.canonicalJsonMBps),
    xxh64MBps: Math.round(r.xxh64MBps),
    xxh64x2MBps: Math.round(r.xxh64x2MBps),
    overheadFactor: round1(r.overheadFactor),
  }));
  if (hashingSink() === -1n) progress('unreachable');
  const passes: Pass[] = [
    ...settings.modes.map((mode): Pass => ({ name: mode, mode, medium: 'disk' })),
    ...(settings.services ? [{ name: 'etcd, pg+redis', mode: 'etcd', medium: 'disk', workload: 'services' } satisfies Pass] : []),
    ...settings.tmpfsModes.map((mode): Pass => ({ name: `${mode} (tmpfs)`, mode, medium: 'tmpfs' })),
  ];
  let etcd: EtcdServer | undefined;
  let services: Services | undefined;
  try {
    if (settings.services || settings.twoInstances.length > 0) {
      progress('starting PostgreSQL and Redis (test harness, durable settings)');
      services = await startServices();
    }
    if (passes.some((pass) => pass.mode === 'etcd') || settings.profile) {
      progress('starting etcd (test harness, data on disk)');
      // Room for a few hundred thousand sessions' revisions, compacted as the run goes.
      etcd = await startEtcd({
        extraArgs: ['--quota-backend-bytes', String(4 * 1024 ** 3), '--auto-compaction-mode', 'periodic', '--auto-compaction-retention', '1m'],
      });
    }
    const results: Record<string, PassResult> = {};
    for (const pass of passes) results[pass.name] = await benchPass(pass, etcd, services);
    const twoInstances =
      etcd && services && settings.twoInstances.length > 0
        ? [await benchTwoInstances(etcd, services, 'pg+redis'), await benchTwoInstances(etcd, services, 'sqlite')]
        : undefined;
    const profiles: ProfileResult[] = [];
    if (settings.profile) {
      profiles.push(await benchProfile({ name: 'etcd', mode: 'etcd', medium: 'disk' }, etcd));
      profiles.push(await benchProfile({ name: 'embedded (tmpfs)', mode: 'embedded', medium: 'tmpfs' }, etcd));
      // One session in flight, on disk: nothing overlaps, so this shows the latency of one session.
      profiles.push(await benchProfile({ name: 'embedded', mode: 'embedded', medium: 'disk' }, etcd, 1));
    }
    const memory = settings.rssCheckpoints.length > 0 ? await benchMemory() : undefined;
    const loadAfter = machineLoad();

    printTable(results);
    for (const pair of twoInstances ?? []) {
      process.stdout.write(`\ntwo instances on one etcd (${pair.workload} stores; ${pair.pinned}):\n`);
      for (const [c, cell] of Object.entries(pair.cells)) process.stdout.write(`  c=${c}: ${JSON.stringify(cell)}\n`);
    }
    printHashing(hashing);
    if (memory) {
      const at = Object.entries(memory.checkpoints).map(([n, sample]) => `${n}: ${sample.rssMiB} MiB (heap ${sample.heapUsedMiB})`);
      process.stdout.write(
        `\nRSS after n sessions (embedded KV, tmpfs): ${at.join(', ')}; growth ${memory.growthPct}%; ${memory.afterIdleMiB} MiB after 5 s idle\n`,
      );
    }
    for (const profile of profiles) {
      process.stdout.write(
        `\nprofile ${profile.pass} (${profile.concurrency} in flight, ${profile.perSecond}/s): busy ${profile.busyMs} of ${profile.totalMs} ms; top self frames:\n`,
      );
      for (const frame of profile.topFrames.slice(0, 10)) process.stdout.write(`  ${frame.selfPct.toFixed(1).padStart(5)}%  ${frame.frame}\n`);
    }
    // Issue 17's goals: ahead of the floor at 16 and 64 in flight, 0.8 of it with one,
    // p99 at most twice the floor's, two instances 1.6x one, RSS growth at most 10 %.
    const goals = {
      ratio: Object.fromEntries(
        Object.entries(results).map(([name, result]) => [
          name,
          Object.fromEntries(Object.entries(result.cells).map(([c, cell]) => [c, cell.ratio >= (Number(c) === 1 ? 0.8 : 1)])),
        ]),
      ),
      p99AtMostTwiceFloor: Object.fromEntries(
        Object.entries(results).map(([name, result]) => [
          name,
          Object.fromEntries(Object.entries(result.cells).map(([c, cell]) => [c, cell.p99 <= 2 * cell.floorP99])),
        ]),
      ),
      ...(twoInstances
        ? {
            twoInstancesAtLeast1_6x: Object.fromEntries(
              twoInstances.map((pair) => [
                pair.workload,
                Object.fromEntries(Object.entries(pair.cells).map(([c, cell]) => [c, (cell as { scaling: number }).scaling >= 1.6])),
              ]),
            ),
          }
        : {}),
      ...(memory ? { rssGrowthAtMost10Pct: memory.growthPct <= 10 } : {}),
    };
    const cpus = os.cpus();
    const report = {
      generatedAt: new Date().toISOString(),
      command: 'npm run bench',
      commit: sourceCommit(),
      machine: {
        cpus: cpus.length,
        model: cpus[0]?.model ?? 'unknown',
        memoryGiB: Math.round(os.totalmem() / 1024 ** 3),
        node: process.version,
        platform: `${os.type()} ${os.release()}`,
        loadBefore,
        loadAfter,
      },
      settings: { ...settings, out: undefined, etcd: etcd ? 'single member from test/harness/etcd.ts, data on disk' : undefined },
      passes: results,
      goals,
      hashing,
      ...(memory ? { rss: memory } : {}),
      ...(twoInstances ? { twoInstances } : {}),
      profiles,
    };
    writeFileSync(settings.out, formatJson(report));
    progress(`wrote ${settings.out}`);
    const points: ChartPoint[] = Object.entries(results).flatMap(([pass, result]) =>
      Object.entries(result.cells).flatMap(([c, cell]) => [
        { pass, concurrency: Number(c), series: 'commitd', sessionsPerSecond: cell.commitd, p99Ms: cell.p99 },
        { pass, concurrency: Number(c), series: 'floor', sessionsPerSecond: cell.floor, p99Ms: cell.floorP99 },
        ...(cell.baseline ? [{ pass, concurrency: Number(c), series: 'baseline', sessionsPerSecond: cell.baseline.perSecond, p99Ms: cell.baseline.p99 }] : []),
      ]),
    );
    if (settings.chart) {
      writeFileSync(
        settings.chart,
        await chartSvg(
          points,
          `commitd against its floor, ${report.generatedAt.slice(0, 10)}, ${report.machine.cpus} vCPUs (${report.commit ?? 'unknown commit'})`,
        ),
      );
      progress(`wrote ${settings.chart}`);
    }
  } finally {
    await services?.stop();
    await etcd?.cleanup();
    removeRoots();
  }
}

await main();

/**
 * commitd as its own process (`src/main.ts` through tsx) on a free loopback port, so the
 * server does not share an event loop with the load generator. Reads its resident memory
 * from /proc and its KV round trips from `/metrics`.
 * @module
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { spawnTracked, type TrackedProcess } from '../test/harness/child.ts';
import { freePort, waitForPort } from '../test/harness/ports.ts';

const MAIN = new URL('../src/main.ts', import.meta.url).pathname;

export interface CommitdOptions {
  /** Data dir (coordinator.db in embedded mode, the instance id file); the config goes here too. */
  readonly dir: string;
  /** sqlite store files by store name. */
  readonly stores: Readonly<Record<string, string>>;
  readonly etcd?: { readonly endpoints: readonly string[]; readonly namespace: string };
  /** Write a V8 CPU profile into this directory when the process exits. */
  readonly cpuProfileDir?: string;
  /** More node flags for the server process (e.g. `--heapsnapshot-signal=SIGUSR2`). */
  readonly nodeFlags?: readonly string[];
  /** Store definitions of any type; replace `stores` when given. */
  readonly storeDefinitions?: readonly { readonly name: string; readonly type: string; readonly options: Record<string, unknown> }[];
  /** Another checkout of commitd to run instead of this one (the A/B baseline). */
  readonly sourceDir?: string;
  /** CPUs the server may run on (`taskset -c`), e.g. `"0"`. */
  readonly cpus?: string;
}

/** A running commitd. */
export interface CommitdProcess {
  readonly url: string;
  readonly pid: number;
  readonly process: TrackedProcess;
  /** VmRSS of the server process, in bytes. */
  rssBytes(): number;
  /** CPU time the server process has used so far, µs. */
  cpuMicros(): number;
  /** CPU time (user + system) its main thread alone has used so far, in µs. */
  mainThreadCpuMicros(): number;
  /** Completed coordinator KV operations so far, by operation (from `/metrics`). */
  kvOperations(): Promise<Map<string, number>>;
  /** V8 heap in use and memory outside it (Buffers, wasm, native addons' tracked memory), bytes. */
  heap(): Promise<{ used: number; external: number }>;
  /** SIGTERM (a clean shutdown, which also writes the CPU profile); SIGKILL after 15 s. */
  stop(): Promise<void>;
}

/** VmRSS of `pid` in bytes, from /proc (Linux). */
export function rssOf(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const match = /^VmRSS:\s+(\d+)\s+kB/m.exec(status);
  if (!match) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(match[1]) * 1024;
}

/**
 * CPU time (user + system) `pid` has used so far, in µs, from /proc (Linux): every thread,
 * or only thread `tid` (the main thread's tid is the pid).
 */
export function cpuOf(pid: number, tid?: number): number {
  const stat = readFileSync(tid === undefined ? `/proc/${pid}/stat` : `/proc/${pid}/task/${tid}/stat`, 'utf8');
  // Fields after the command name (which may contain spaces) start at its closing parenthesis.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ticks = Number(fields[11]) + Number(fields[12]);
  return (ticks * 1e6) / CLOCK_TICKS_PER_SECOND;
}

/** USER_HZ: /proc reports CPU time in these ticks; 100 on every Linux build that matters. */
const CLOCK_TICKS_PER_SECOND = 100;

/** Sums `commitd_kv_operation_duration_seconds_count` by its `op` label. */
function parseKvCounts(text: string): Map<string, number> {
  const counts = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (!line.startsWith('commitd_kv_operation_duration_seconds_count{')) continue;
    const op = /op="([^"]+)"/.exec(line)?.[1];
    const value = Number(line.slice(line.lastIndexOf(' ') + 1));
    if (op) counts.set(op, (counts.get(op) ?? 0) + value);
  }
  return counts;
}

async function metricsText(url: string): Promise<string> {
  const response = await fetch(`${url}/metrics`);
  return response.text();
}

/** The value of an unlabelled gauge in Prometheus text. */
function gauge(text: string, name: string): number {
  const line = text.split('\n').find((candidate) => candidate.startsWith(`${name} `));
  return line === undefined ? Number.NaN : Number(line.slice(name.length + 1));
}

export async function startCommitd(options: CommitdOptions): Promise<CommitdProcess> {
  const port = await freePort();
  const config = join(options.dir, 'commitd.json');
  const stores = options.storeDefinitions ?? Object.entries(options.stores).map(([name, path]) => ({ name, type: 'sqlite', options: { path } }));
  writeFileSync(config, JSON.stringify({ stores }));
  const env: Record<string, string> = {};
  for (const [name, value] of Object.entries(process.env)) if (value !== undefined && !name.startsWith('COMMITD_')) env[name] = value;
  Object.assign(env, {
    COMMITD_PORT: String(port),
    COMMITD_DATA_DIR: options.dir,
    COMMITD_CONFIG: config,
    COMMITD_LOG_LEVEL: 'warn',
    ...(options.etcd ? { COMMITD_ETCD_ENDPOINTS: options.etcd.endpoints.join(','), COMMITD_ETCD_NAMESPACE: options.etcd.namespace } : {}),
  });
  const profile = options.cpuProfileDir ? ['--cpu-prof', '--cpu-prof-dir', options.cpuProfileDir] : [];
  const main = options.sourceDir ? join(options.sourceDir, 'src', 'main.ts') : MAIN;
  const flags = [...profile, ...(options.nodeFlags ?? []), '--import', 'tsx', main];
  // taskset execs node: the child's pid is the server's.
  const [command, args] = options.cpus ? ['taskset', ['-c', options.cpus, process.execPath, ...flags]] : [process.execPath, flags];
  const child = await spawnTracked(command, args, { name: 'commitd', env, tailLines: 200, ...(options.sourceDir ? { cwd: options.sourceDir } : {}) });
  try {
    const exited = child.exited.then((exit) => Promise.reject(new Error(`exited (${exit.signal ?? exit.code}) before listening`)));
    await Promise.race([waitForPort(port, { timeoutMs: 60_000 }), exited]);
  } catch (err) {
    await child.kill('SIGKILL');
    throw child.failure(err instanceof Error ? err.message : String(err));
  }
  const url = `http://127.0.0.1:${port}`;
  return {
    url,
    pid: child.pid,
    process: child,
    rssBytes: () => rssOf(child.pid),
    cpuMicros: () => cpuOf(child.pid),
    mainThreadCpuMicros: () => cpuOf(child.pid, child.pid),
    async kvOperations() {
      return parseKvCounts(await metricsText(url));
    },
    async heap() {
      const text = await metricsText(url);
      return { used: gauge(text, 'nodejs_heap_size_used_bytes'), external: gauge(text, 'nodejs_external_memory_bytes') };
    },
    async stop() {
      await child.stop('SIGTERM', 15_000);
    },
  };
}

/**
 * commitd as a real process, for tests where the process is the point — SIGKILL,
 * failpoints, restarts, exit codes, the `commitd` executable. Every suite spawns commitd
 * through `spawnCommitd`, so every commitd under test sees the same kind of environment.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { StoreDefinition } from '../../src/coordinator/types.ts';
import { spawnTracked, spawnTsx, type TrackedProcess } from '../harness/child.ts';
import { freePort } from '../harness/ports.ts';

const MAIN = fileURLToPath(new URL('../../src/main.ts', import.meta.url));
const BIN = fileURLToPath(new URL('../../bin/commitd.mjs', import.meta.url));

/** Settings of one commitd process: only COMMITD_* variables, checked by the compiler. */
export type CommitdEnv = Readonly<Record<`COMMITD_${string}`, string>>;

export interface CommitdCommand {
  readonly env: CommitdEnv;
  /** Arguments of the `commitd` executable (bin/commitd.mjs); absent: the server entry, src/main.ts. */
  readonly bin?: readonly string[];
}

/**
 * Spawns commitd with a clean environment: PATH and HOME, plus the caller's COMMITD_*
 * settings. Nothing else of the test runner's environment gets through, because it would
 * silently change what a test starts: a COMMITD_TOKEN or COMMITD_FAILPOINTS of the shell
 * turns auth on or crashes the process, PG* and ETCD* variables are read by the store
 * clients, and NODE_OPTIONS / NODE_TEST_CONTEXT belong to the test runner.
 */
export function spawnCommitd(command: CommitdCommand): Promise<TrackedProcess> {
  const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, HOME: process.env.HOME, ...command.env };
  if (command.bin === undefined) return spawnTsx(MAIN, [], { name: 'commitd', env });
  return spawnTracked(process.execPath, [BIN, ...command.bin], { name: `commitd ${command.bin.join(' ')}`, env });
}

/** Runs the `commitd` executable with `args` to completion (within 30 s), keeping its exit code and output. */
export async function runCommitd(args: readonly string[], env: CommitdEnv = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  const cli = await spawnCommitd({ bin: args, env });
  // The whole output, byte for byte (the tracked tail keeps lines only). Listening right
  // after the spawn misses nothing: output arrives in a later I/O turn.
  const text = { stdout: '', stderr: '' };
  cli.child.stdout?.on('data', (chunk: string) => (text.stdout += chunk));
  cli.child.stderr?.on('data', (chunk: string) => (text.stderr += chunk));
  const exit = await cli.waitForExit(30_000).catch(async (error: unknown) => {
    await cli.kill();
    throw error;
  });
  if (exit.code === null) throw cli.failure(`ended by ${exit.signal}`);
  return { code: exit.code, ...text };
}

export interface ProcessServiceOptions {
  readonly dir: string;
  readonly stores: readonly StoreDefinition[];
  /** etcd endpoints and namespace; absent → the embedded KV in `dir`. */
  readonly etcd?: { readonly endpoints: readonly string[]; readonly namespace: string };
  /** Extra fields of the config file (durations as strings such as "2s", "500ms"). */
  /** COMMITD_TOKEN for the process; `request` then sends it. */
  readonly token?: string;
  readonly config?: {
    readonly instanceId?: string;
    readonly leaseTtl?: string;
    readonly recoveryInterval?: string;
    readonly sessionIdleTimeout?: string;
    readonly storeRoots?: readonly string[];
  };
}

/** A running commitd process and how to talk to it. */
export interface ProcessService {
  readonly url: string;
  readonly process: TrackedProcess;
  /** Sends a JSON request; resolves with status and body, or rejects when the connection drops. */
  request(method: string, path: string, body?: unknown): Promise<{ status: number; body: Record<string, unknown>; headers: Headers }>;
}

/**
 * Starts commitd and waits until it listens (unless `waitListening` is false: a process
 * meant to die during start-up). `failpoints` sets COMMITD_FAILPOINTS.
 */
export async function startProcess(options: ProcessServiceOptions, failpoints?: string, waitListening = true): Promise<ProcessService> {
  const port = await freePort();
  mkdirSync(options.dir, { recursive: true });
  const config = join(options.dir, 'commitd.json');
  writeFileSync(config, JSON.stringify({ ...options.config, stores: options.stores }));
  const child = await spawnCommitd({
    env: {
      COMMITD_PORT: String(port),
      COMMITD_DATA_DIR: options.dir,
      COMMITD_CONFIG: config,
      COMMITD_LOG_LEVEL: 'info',
      ...(options.etcd ? { COMMITD_ETCD_ENDPOINTS: options.etcd.endpoints.join(','), COMMITD_ETCD_NAMESPACE: options.etcd.namespace } : {}),
      ...(failpoints ? { COMMITD_FAILPOINTS: failpoints } : {}),
      ...(options.token ? { COMMITD_TOKEN: options.token } : {}),
    },
  });
  if (waitListening) await child.waitForLine(/commitd listening/, { timeoutMs: 30_000 });
  const url = `http://127.0.0.1:${port}`;
  return {
    url,
    process: child,
    async request(method, path, body) {
      const res = await fetch(`${url}${path}`, {
        method,
        headers: {
          ...(body === undefined ? {} : { 'content-type': 'application/json' }),
          ...(options.token ? { authorization: `Bearer ${options.token}` } : {}),
        },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      return { status: res.status, body: (await res.json()) as Record<string, unknown>, headers: res.headers };
    },
  };
}

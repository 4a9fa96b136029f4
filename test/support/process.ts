/**
 * commitd as a real process (`src/main.ts` through tsx) on a free loopback port: for tests
 * where the process is the point — SIGKILL, failpoints, restarts.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { StoreDefinition } from '../../src/coordinator/types.ts';
import { spawnTsx, type TrackedProcess } from '../harness/child.ts';
import { freePort } from '../harness/ports.ts';

const MAIN = new URL('../../src/main.ts', import.meta.url).pathname;

export interface ProcessServiceOptions {
  readonly dir: string;
  readonly stores: readonly StoreDefinition[];
  /** etcd endpoints and namespace; absent → the embedded KV in `dir`. */
  readonly etcd?: { readonly endpoints: readonly string[]; readonly namespace: string };
  readonly env?: Readonly<Record<string, string>>;
  /** Extra fields of the config file (durations as strings such as "2s", "500ms"). */
  readonly config?: {
    readonly instanceId?: string;
    readonly leaseTtl?: string;
    readonly recoveryInterval?: string;
    readonly sessionIdleTimeout?: string;
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
  const env: Record<string, string> = {
    ...(process.env as Record<string, string>),
    COMMITD_PORT: String(port),
    COMMITD_DATA_DIR: options.dir,
    COMMITD_CONFIG: config,
    COMMITD_LOG_LEVEL: 'info',
    ...(options.etcd ? { COMMITD_ETCD_ENDPOINTS: options.etcd.endpoints.join(','), COMMITD_ETCD_NAMESPACE: options.etcd.namespace } : {}),
    ...(failpoints ? { COMMITD_FAILPOINTS: failpoints } : {}),
    ...options.env,
  };
  delete env.COMMITD_TOKEN;
  if (!failpoints) delete env.COMMITD_FAILPOINTS;
  const child = await spawnTsx(MAIN, [], { env });
  if (waitListening) await child.waitForLine(/commitd listening/, { timeoutMs: 30_000 });
  const url = `http://127.0.0.1:${port}`;
  return {
    url,
    process: child,
    async request(method, path, body) {
      const res = await fetch(`${url}${path}`, {
        method,
        headers: body === undefined ? {} : { 'content-type': 'application/json' },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      return { status: res.status, body: (await res.json()) as Record<string, unknown>, headers: res.headers };
    },
  };
}

import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { makeTempDir, spawnTracked } from './child.ts';
import { freePorts } from './ports.ts';
import { requireBinary } from './require.ts';
import { ServerProcess, type ManagedServer } from './server-process.ts';

export interface EtcdOptions {
  /** Extra etcd flags, appended last. */
  extraArgs?: string[];
  /** Readiness timeout per (re)start, default 20 s. */
  startTimeoutMs?: number;
}

export interface EtcdServer extends ManagedServer {
  readonly name: string;
  /** Client URLs, e.g. `http://127.0.0.1:PORT`. */
  readonly endpoints: string[];
  readonly clientUrl: string;
  readonly peerUrl: string;
}

export interface EtcdCluster {
  readonly members: EtcdServer[];
  readonly endpoints: string[];
  /** Index into `members` of the current leader; retries while an election is in progress. */
  leader(timeoutMs?: number): Promise<number>;
  cleanup(): Promise<void>;
}

export function etcdBinary(): string | undefined {
  return requireBinary('etcd', 'ETCD_BIN');
}

/** POSTs JSON to etcd's grpc-gateway (e.g. `/v3/kv/put`) and returns the parsed reply. */
export async function etcdRequest(endpoint: string, apiPath: string, body: object, timeoutMs = 2_000): Promise<unknown> {
  const res = await fetch(endpoint + apiPath, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(timeoutMs),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`etcd ${apiPath} -> HTTP ${res.status}: ${text}`);
  return JSON.parse(text) as unknown;
}

async function isHealthy(endpoint: string): Promise<boolean> {
  const res = await fetch(`${endpoint}/health`, { signal: AbortSignal.timeout(1_000) });
  if (!res.ok) return false;
  const body = (await res.json()) as { health?: unknown };
  return body.health === 'true';
}

/** The parent's ETCD_* variables would silently override or conflict with our flags. */
function etcdEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (!key.startsWith('ETCD_') || key === 'ETCD_UNSUPPORTED_ARCH') env[key] = value;
  }
  return env;
}

interface MemberConfig {
  binary: string;
  name: string;
  clientPort: number;
  peerPort: number;
  initialCluster: string;
  clusterToken: string;
  startTimeoutMs: number;
  extraArgs: string[];
}

class EtcdMember extends ServerProcess implements EtcdServer {
  readonly name: string;
  readonly clientUrl: string;
  readonly peerUrl: string;
  readonly endpoints: string[];
  readonly dataDir: string;

  private readonly rootDir: string;

  constructor(private readonly config: MemberConfig) {
    const rootDir = makeTempDir(`etcd-${config.name}`);
    super(`etcd ${config.name}`, rootDir);
    this.rootDir = rootDir;
    this.name = config.name;
    this.clientUrl = `http://127.0.0.1:${config.clientPort}`;
    this.peerUrl = `http://127.0.0.1:${config.peerPort}`;
    this.endpoints = [this.clientUrl];
    this.dataDir = path.join(this.rootDir, 'data');
  }

  /** Spawns the process without waiting for health (a cluster needs all members up for that). */
  async launch(state: 'new' | 'existing'): Promise<void> {
    if (this.running) throw new Error(`etcd ${this.name} is already running`);
    const args = [
      '--name',
      this.name,
      '--data-dir',
      this.dataDir,
      '--listen-client-urls',
      this.clientUrl,
      '--advertise-client-urls',
      this.clientUrl,
      '--listen-peer-urls',
      this.peerUrl,
      '--initial-advertise-peer-urls',
      this.peerUrl,
      '--initial-cluster',
      this.config.initialCluster,
      '--initial-cluster-state',
      state,
      '--initial-cluster-token',
      this.config.clusterToken,
      '--heartbeat-interval',
      '50',
      '--election-timeout',
      '500',
      '--quota-backend-bytes',
      String(256 * 1024 * 1024),
      // 3.4 defaults to the capnslog logger, which ignores --log-level below "info".
      '--logger',
      'zap',
      '--log-outputs',
      'stderr',
      '--log-level',
      'error',
      ...this.config.extraArgs,
    ];
    this.proc = await spawnTracked(this.config.binary, args, {
      name: `etcd ${this.name}`,
      cwd: this.rootDir,
      env: etcdEnv(),
    });
  }

  async waitHealthy(): Promise<void> {
    const proc = this.requireProcess();
    await proc.waitReady(() => isHealthy(this.clientUrl), {
      timeoutMs: this.config.startTimeoutMs,
      what: `GET ${this.clientUrl}/health`,
    });
  }

  /** Restarts rejoin the cluster on the same data. */
  async start(): Promise<void> {
    await this.launch('existing');
    await this.waitHealthy();
  }
}

function resolveBinary(): string {
  const binary = etcdBinary();
  if (!binary) throw new Error('etcd binary not found (set ETCD_BIN or put etcd on PATH)');
  return binary;
}

function clusterToken(): string {
  return `commitd-test-${randomBytes(6).toString('hex')}`;
}

/** A single-member etcd on free loopback ports with a temp data dir, healthy on return. */
export async function startEtcd(opts: EtcdOptions = {}): Promise<EtcdServer> {
  const binary = resolveBinary();
  const [clientPort, peerPort] = (await freePorts(2)) as [number, number];
  const name = 'etcd0';
  const member = new EtcdMember({
    binary,
    name,
    clientPort,
    peerPort,
    initialCluster: `${name}=http://127.0.0.1:${peerPort}`,
    clusterToken: clusterToken(),
    startTimeoutMs: opts.startTimeoutMs ?? 20_000,
    extraArgs: opts.extraArgs ?? [],
  });
  try {
    await member.launch('new');
    await member.waitHealthy();
    return member;
  } catch (err) {
    await member.cleanup();
    throw err;
  }
}

interface StatusReply {
  header?: { member_id?: string };
  leader?: string;
}

async function memberStatus(member: EtcdServer): Promise<StatusReply | undefined> {
  if (!member.running) return undefined;
  try {
    return (await etcdRequest(member.clientUrl, '/v3/maintenance/status', {}, 500)) as StatusReply;
  } catch {
    return undefined;
  }
}

async function findLeader(members: EtcdServer[], timeoutMs: number): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const replies = await Promise.all(members.map(memberStatus));
    const ids = replies.map((reply) => reply?.header?.member_id);
    for (const reply of replies) {
      // "0" means this member currently knows no leader.
      if (!reply?.leader || reply.leader === '0') continue;
      const index = ids.indexOf(reply.leader);
      if (index >= 0) return index;
    }
    await sleep(100);
  }
  throw new Error(`no etcd leader among ${members.map((m) => m.name).join(', ')} within ${timeoutMs} ms`);
}

/** An n-member etcd cluster on loopback, every member healthy on return. */
export async function startEtcdCluster(size = 3, opts: EtcdOptions = {}): Promise<EtcdCluster> {
  const binary = resolveBinary();
  const ports = await freePorts(size * 2);
  const names = Array.from({ length: size }, (_, i) => `etcd${i}`);
  const initialCluster = names.map((name, i) => `${name}=http://127.0.0.1:${ports[size + i]}`).join(',');
  const token = clusterToken();
  const members = names.map(
    (name, i) =>
      new EtcdMember({
        binary,
        name,
        clientPort: ports[i]!,
        peerPort: ports[size + i]!,
        initialCluster,
        clusterToken: token,
        startTimeoutMs: opts.startTimeoutMs ?? 20_000,
        extraArgs: opts.extraArgs ?? [],
      }),
  );
  const cleanup = async (): Promise<void> => {
    await Promise.all(members.map((member) => member.cleanup()));
  };
  try {
    for (const member of members) await member.launch('new');
    await Promise.all(members.map((member) => member.waitHealthy()));
  } catch (err) {
    await cleanup();
    throw err;
  }
  return {
    members,
    endpoints: members.map((member) => member.clientUrl),
    leader: (timeoutMs = 10_000) => findLeader(members, timeoutMs),
    cleanup,
  };
}

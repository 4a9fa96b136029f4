import { makeTempDir, spawnTracked } from './child.ts';
import { freePorts } from './ports.ts';
import { requireBinary } from './require.ts';
import { ServerProcess, type ManagedServer } from './server-process.ts';

export interface NatsOptions {
  extraArgs?: string[];
  /** Readiness timeout per (re)start, default 15 s. */
  startTimeoutMs?: number;
}

export interface NatsServer extends ManagedServer {
  /** `nats://127.0.0.1:PORT` */
  readonly url: string;
  readonly port: number;
  /** The HTTP monitoring port (`/healthz`). */
  readonly monitorPort: number;
}

/** `nats-server` from NATS_SERVER_BIN, PATH, or where the Debian package puts it. */
export function natsBinary(): string | undefined {
  return requireBinary('nats-server', 'NATS_SERVER_BIN') ?? requireBinary('/usr/sbin/nats-server');
}

/** True once the server answers `/healthz` with 200: it accepts clients and JetStream has recovered its streams. */
async function healthy(monitorPort: number): Promise<boolean> {
  try {
    const res = await fetch(`http://127.0.0.1:${monitorPort}/healthz`, { signal: AbortSignal.timeout(1_000) });
    await res.body?.cancel();
    return res.ok;
  } catch {
    return false;
  }
}

class NatsInstance extends ServerProcess implements NatsServer {
  readonly url: string;

  constructor(
    private readonly binary: string,
    readonly port: number,
    readonly monitorPort: number,
    readonly dataDir: string,
    private readonly opts: NatsOptions,
  ) {
    super(`nats :${port}`, dataDir);
    this.url = `nats://127.0.0.1:${port}`;
  }

  async start(): Promise<void> {
    if (this.running) throw new Error('nats-server is already running');
    const args = ['-js', '-sd', this.dataDir, '-a', '127.0.0.1', '-p', String(this.port), '-m', String(this.monitorPort), ...(this.opts.extraArgs ?? [])];
    this.proc = await spawnTracked(this.binary, args, { name: `nats :${this.port}`, cwd: this.dataDir });
    await this.proc.waitReady(() => healthy(this.monitorPort), {
      timeoutMs: this.opts.startTimeoutMs ?? 15_000,
      what: `/healthz of nats :${this.port}`,
    });
  }
}

/** A JetStream-enabled nats-server on free loopback ports with a temp store dir, healthy on return. */
export async function startNats(opts: NatsOptions = {}): Promise<NatsServer> {
  const binary = natsBinary();
  if (!binary) throw new Error('nats-server not found (set NATS_SERVER_BIN or put nats-server on PATH)');
  const [port, monitorPort] = (await freePorts(2)) as [number, number];
  const server = new NatsInstance(binary, port, monitorPort, makeTempDir('nats'), opts);
  try {
    await server.start();
    return server;
  } catch (err) {
    await server.cleanup();
    throw err;
  }
}

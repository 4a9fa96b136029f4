import net from 'node:net';
import { makeTempDir, spawnTracked } from './child.ts';
import { freePort } from './ports.ts';
import { requireBinary } from './require.ts';
import { ServerProcess, type ManagedServer } from './server-process.ts';

export interface RedisOptions {
  /** Keep data across kill/restart with an fsync-always append-only file. */
  appendonly?: boolean;
  extraArgs?: string[];
  /** Readiness timeout per (re)start, default 10 s. */
  startTimeoutMs?: number;
}

export interface RedisServer extends ManagedServer {
  /** `redis://127.0.0.1:PORT` */
  readonly url: string;
  readonly port: number;
}

export function redisBinary(): string | undefined {
  return requireBinary('redis-server', 'REDIS_BIN');
}

/** True once the server answers PING with +PONG (not -LOADING while it replays the AOF). */
function pongs(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ port, host: '127.0.0.1' });
    let reply = '';
    const done = (ok: boolean): void => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(1_000, () => done(false));
    socket.once('error', () => done(false));
    socket.once('connect', () => socket.write('PING\r\n'));
    socket.on('data', (chunk) => {
      reply += chunk.toString('utf8');
      if (reply.includes('\r\n')) done(reply.startsWith('+PONG'));
    });
  });
}

class RedisInstance extends ServerProcess implements RedisServer {
  readonly url: string;

  constructor(
    private readonly binary: string,
    readonly port: number,
    readonly dataDir: string,
    private readonly opts: RedisOptions,
  ) {
    super(`redis :${port}`, dataDir);
    this.url = `redis://127.0.0.1:${port}`;
  }

  async start(): Promise<void> {
    if (this.running) throw new Error('redis is already running');
    const persistence = this.opts.appendonly ? ['--appendonly', 'yes', '--appendfsync', 'always'] : ['--appendonly', 'no'];
    const args = [
      '--port',
      String(this.port),
      '--bind',
      '127.0.0.1',
      '--save',
      '',
      ...persistence,
      '--dir',
      this.dataDir,
      '--loglevel',
      'warning',
      ...(this.opts.extraArgs ?? []),
    ];
    this.proc = await spawnTracked(this.binary, args, { name: `redis :${this.port}`, cwd: this.dataDir });
    await this.proc.waitReady(() => pongs(this.port), {
      timeoutMs: this.opts.startTimeoutMs ?? 10_000,
      what: `PING on ${this.url}`,
    });
  }
}

/** A redis-server on a free loopback port with a temp working dir, answering PING on return. */
export async function startRedis(opts: RedisOptions = {}): Promise<RedisServer> {
  const binary = redisBinary();
  if (!binary) throw new Error('redis-server not found (set REDIS_BIN or put redis-server on PATH)');
  const server = new RedisInstance(binary, await freePort(), makeTempDir('redis'), opts);
  try {
    await server.start();
    return server;
  } catch (err) {
    await server.cleanup();
    throw err;
  }
}

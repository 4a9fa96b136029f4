import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, realpathSync } from 'node:fs';
import { chown } from 'node:fs/promises';
import path from 'node:path';
import pg from 'pg';
import { makeTempDir, spawnTracked } from './child.ts';
import { freePort } from './ports.ts';
import { requireBinary } from './require.ts';
import { ServerProcess, type ManagedServer } from './server-process.ts';

export interface PostgresOptions {
  /** Enables prepared transactions (max_prepared_transactions=10); otherwise 0. */
  twoPhase?: boolean;
  /** Extra `-c name=value` settings. */
  settings?: Record<string, string>;
  /** Readiness timeout per (re)start, default 30 s. */
  startTimeoutMs?: number;
}

export interface PostgresServer extends ManagedServer {
  /** `postgres://postgres@127.0.0.1:PORT/postgres` */
  readonly connectionString: string;
  readonly port: number;
}

/**
 * Directory holding initdb and postgres: `$PG_BINDIR`, else the directory
 * `initdb` on PATH really lives in, else the newest /usr/lib/postgresql/N/bin
 * (Debian does not put server binaries on PATH).
 */
export function postgresBinDir(): string | undefined {
  const fromEnv = process.env.PG_BINDIR;
  if (fromEnv) return existsSync(path.join(fromEnv, 'initdb')) ? fromEnv : undefined;
  const initdb = requireBinary('initdb');
  if (initdb) return path.dirname(realpathSync(initdb));
  const debianRoot = '/usr/lib/postgresql';
  if (!existsSync(debianRoot)) return undefined;
  const versions = readdirSync(debianRoot)
    .filter((v) => existsSync(path.join(debianRoot, v, 'bin', 'initdb')))
    .sort((a, b) => Number(b) - Number(a));
  return versions[0] === undefined ? undefined : path.join(debianRoot, versions[0], 'bin');
}

interface RunAs {
  uid: number;
  gid: number;
}

/** PostgreSQL refuses to run as root, so as root we run it as `postgres` (or `nobody`). */
function unprivilegedUser(): RunAs | undefined {
  if (process.getuid?.() !== 0) return undefined;
  for (const user of ['postgres', 'nobody']) {
    try {
      const uid = Number(execFileSync('id', ['-u', user], { encoding: 'utf8' }).trim());
      const gid = Number(execFileSync('id', ['-g', user], { encoding: 'utf8' }).trim());
      return { uid, gid };
    } catch {
      // try the next candidate
    }
  }
  throw new Error('running as root but neither a "postgres" nor a "nobody" user exists to run PostgreSQL');
}

async function answersQueries(connectionString: string): Promise<boolean> {
  const client = new pg.Client({ connectionString, connectionTimeoutMillis: 1_000 });
  // A connection refused mid-startup also emits 'error'; the rejected connect() reports it.
  client.on('error', () => {});
  try {
    await client.connect();
    await client.query('select 1');
    return true;
  } finally {
    await client.end().catch(() => {});
  }
}

class PostgresInstance extends ServerProcess implements PostgresServer {
  readonly connectionString: string;
  readonly dataDir: string;

  constructor(
    private readonly binDir: string,
    readonly port: number,
    private readonly rootDir: string,
    private readonly runAs: RunAs | undefined,
    private readonly settings: Record<string, string>,
    private readonly startTimeoutMs: number,
  ) {
    // SIGINT is PostgreSQL's fast shutdown: SIGTERM would wait for every client to leave.
    super(`postgres :${port}`, rootDir, 'SIGINT', 30_000);
    this.connectionString = `postgres://postgres@127.0.0.1:${port}/postgres`;
    this.dataDir = path.join(rootDir, 'data');
  }

  async initdb(): Promise<void> {
    const args = ['-D', this.dataDir, '-A', 'trust', '-U', 'postgres', '-E', 'UTF8', '--locale=C', '--no-sync'];
    const proc = await spawnTracked(path.join(this.binDir, 'initdb'), args, { cwd: this.rootDir, ...this.runAs });
    const exit = await proc.waitForExit(60_000);
    if (exit.code !== 0) throw proc.failure(`initdb failed (code ${exit.code}, signal ${exit.signal})`);
  }

  async start(): Promise<void> {
    if (this.running) throw new Error('postgres is already running');
    const settings = Object.entries(this.settings).flatMap(([key, value]) => ['-c', `${key}=${value}`]);
    // -k keeps the unix socket out of /var/run/postgresql, which may not exist or be writable.
    const args = ['-D', this.dataDir, '-p', String(this.port), '-k', this.rootDir, ...settings];
    this.proc = await spawnTracked(path.join(this.binDir, 'postgres'), args, {
      name: `postgres :${this.port}`,
      cwd: this.rootDir,
      ...this.runAs,
    });
    await this.proc.waitReady(() => answersQueries(this.connectionString), {
      timeoutMs: this.startTimeoutMs,
      what: `select 1 on ${this.connectionString}`,
    });
  }
}

/** A fresh PostgreSQL cluster (initdb) on a free loopback port, answering queries on return. */
export async function startPostgres(opts: PostgresOptions = {}): Promise<PostgresServer> {
  const binDir = postgresBinDir();
  if (!binDir) throw new Error('PostgreSQL server binaries not found (set PG_BINDIR or install postgresql)');
  const runAs = unprivilegedUser();
  const rootDir = makeTempDir('pg');
  if (runAs) await chown(rootDir, runAs.uid, runAs.gid);
  const settings: Record<string, string> = {
    listen_addresses: '127.0.0.1',
    // Durability against OS crashes is irrelevant for throwaway test data; process crashes are still safe.
    fsync: 'off',
    max_prepared_transactions: opts.twoPhase ? '10' : '0',
    ...opts.settings,
  };
  const server = new PostgresInstance(binDir, await freePort(), rootDir, runAs, settings, opts.startTimeoutMs ?? 30_000);
  try {
    await server.initdb();
    await server.start();
    return server;
  } catch (err) {
    await server.cleanup();
    throw err;
  }
}

import { randomUUID } from 'node:crypto';
import os from 'node:os';
import path from 'node:path';
import mysql from 'mysql2/promise';
import { makeTempDir, spawnTracked } from './child.ts';
import { freePort } from './ports.ts';
import { requireBinary } from './require.ts';
import { ServerProcess, type ManagedServer } from './server-process.ts';

export interface MariadbOptions {
  /** Extra `--name=value` server options. */
  settings?: Record<string, string>;
  /** Readiness timeout per (re)start, default 60 s. */
  startTimeoutMs?: number;
}

export interface MariadbServer extends ManagedServer {
  /** `mysql://root@127.0.0.1:PORT/` (no database selected). */
  readonly url: string;
  readonly port: number;
  /** Creates a database of its own (a unique name from `label`) and returns its connection string. */
  createDatabase(label: string): Promise<string>;
}

/** Small, fast and still crash-safe for a process kill: InnoDB's log reaches the OS at each commit. */
const DEFAULT_SETTINGS: Readonly<Record<string, string>> = {
  'innodb-buffer-pool-size': '32M',
  'innodb-log-file-size': '8M',
  'innodb-flush-log-at-trx-commit': '2',
  'skip-log-bin': '',
  'performance-schema': 'OFF',
  'max-connections': '200',
};

/** `mariadbd`: `$MARIADBD_BIN`, else on PATH, else `/usr/sbin/mariadbd` (Debian does not put it on a user's PATH). */
export function mariadbBinary(): string | undefined {
  return requireBinary('mariadbd', 'MARIADBD_BIN') ?? (process.env.MARIADBD_BIN ? undefined : requireBinary('/usr/sbin/mariadbd'));
}

/** `mariadb-install-db`, which initialises a data directory. */
export function mariadbInstallDb(): string | undefined {
  return requireBinary('mariadb-install-db', 'MARIADB_INSTALL_DB') ?? requireBinary('/usr/bin/mariadb-install-db');
}

function options(settings: Readonly<Record<string, string>>): string[] {
  return Object.entries(settings).map(([name, value]) => (value === '' ? `--${name}` : `--${name}=${value}`));
}

async function answersQueries(url: string): Promise<boolean> {
  let conn: mysql.Connection | undefined;
  try {
    conn = await mysql.createConnection({ uri: url, connectTimeout: 1_000 });
    await conn.query('SELECT 1');
    return true;
  } catch {
    return false;
  } finally {
    await conn?.end().catch(() => conn?.destroy());
  }
}

/** The user the server runs as: the current one (`--user` lets root run it). */
const currentUser = (): string => os.userInfo().username;

class MariadbInstance extends ServerProcess implements MariadbServer {
  readonly url: string;
  readonly dataDir: string;

  constructor(
    private readonly binary: string,
    readonly port: number,
    private readonly rootDir: string,
    private readonly settings: Readonly<Record<string, string>>,
    private readonly startTimeoutMs: number,
  ) {
    super(`mariadbd :${port}`, rootDir, 'SIGTERM', 30_000);
    this.url = `mysql://root@127.0.0.1:${port}/`;
    this.dataDir = path.join(rootDir, 'data');
  }

  async installDb(installer: string): Promise<void> {
    const args = [
      '--no-defaults',
      `--datadir=${this.dataDir}`,
      `--user=${currentUser()}`,
      // root@localhost with an empty password, over TCP too (not unix_socket authentication).
      '--auth-root-authentication-method=normal',
      '--skip-test-db',
      '--skip-name-resolve',
      ...options(this.settings),
    ];
    const proc = await spawnTracked(installer, args, { cwd: this.rootDir, name: 'mariadb-install-db' });
    const exit = await proc.waitForExit(120_000);
    if (exit.code !== 0) throw proc.failure(`mariadb-install-db failed (code ${exit.code}, signal ${exit.signal})`);
  }

  async start(): Promise<void> {
    if (this.running) throw new Error('mariadbd is already running');
    const args = [
      '--no-defaults',
      `--datadir=${this.dataDir}`,
      `--user=${currentUser()}`,
      `--port=${this.port}`,
      '--bind-address=127.0.0.1',
      '--skip-networking=0',
      // The socket and pid file stay in the temp dir: /run/mysqld may not exist, or belong to the machine's server.
      `--socket=${path.join(this.rootDir, 'mysqld.sock')}`,
      `--pid-file=${path.join(this.rootDir, 'mysqld.pid')}`,
      ...options(this.settings),
    ];
    this.proc = await spawnTracked(this.binary, args, { name: `mariadbd :${this.port}`, cwd: this.rootDir });
    await this.proc.waitReady(() => answersQueries(this.url), { timeoutMs: this.startTimeoutMs, what: `SELECT 1 on ${this.url}` });
  }

  async createDatabase(label: string): Promise<string> {
    const name = `${label.replace(/[^A-Za-z0-9_]/g, '_')}_${randomUUID().slice(0, 8)}`;
    const conn = await mysql.createConnection({ uri: this.url });
    try {
      await conn.query(`CREATE DATABASE \`${name}\``);
    } finally {
      await conn.end();
    }
    return `${this.url}${name}`;
  }
}

/** A fresh MariaDB server (mariadb-install-db) on a free loopback port, answering queries on return. */
export async function startMariadb(opts: MariadbOptions = {}): Promise<MariadbServer> {
  const binary = mariadbBinary();
  const installer = mariadbInstallDb();
  if (!binary || !installer) throw new Error('MariaDB server binaries not found (set MARIADBD_BIN or install mariadb-server)');
  const rootDir = makeTempDir('mariadb');
  const server = new MariadbInstance(binary, await freePort(), rootDir, { ...DEFAULT_SETTINGS, ...opts.settings }, opts.startTimeoutMs ?? 60_000);
  try {
    await server.installDb(installer);
    await server.start();
    return server;
  } catch (err) {
    await server.cleanup();
    throw err;
  }
}

/** Runs `sql` on the database at `url`, on a connection of its own; resolves with the rows. */
export async function mysqlRows<T>(url: string, sql: string, params: readonly unknown[] = []): Promise<T[]> {
  const conn = await mysql.createConnection({ uri: url });
  try {
    const [rows] = await conn.query(sql, [...params]);
    return rows as T[];
  } finally {
    await conn.end();
  }
}

/**
 * `@commitd/client` as a user gets it: packed from packages/client, installed into an empty
 * project, and used from plain ESM against a real commitd. The install must bring nothing
 * of the server and nothing native.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import Database from 'better-sqlite3';
import { makeTempDir, removeTempDir } from './harness/child.ts';
import { startProcess, type ProcessService } from './support/process.ts';

const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('..', import.meta.url));

/** Packages of the server that must never come with the SDK. */
const SERVER_PACKAGES = ['better-sqlite3', 'fastify', 'pg', 'ioredis', 'etcd3', 'pino'];

/**
 * npm without the `npm_*` variables of an enclosing `npm test`: npm reads `npm_config_*`
 * as its own configuration, which would point the install back at this repository.
 */
function npm(args: readonly string[], cwd: string): Promise<{ stdout: string; stderr: string }> {
  const env = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.toLowerCase().startsWith('npm_')));
  return run('npm', args, { cwd, env, timeout: 240_000, maxBuffer: 16 * 1024 * 1024 });
}

/** The name of every package installed under `nodeModules`, nested ones included. */
function packageNames(nodeModules: string): string[] {
  if (!existsSync(nodeModules)) return [];
  const names: string[] = [];
  for (const entry of readdirSync(nodeModules)) {
    if (entry.startsWith('.')) continue;
    const scoped = entry.startsWith('@') ? readdirSync(join(nodeModules, entry)).map((name) => `${entry}/${name}`) : [entry];
    for (const name of scoped) names.push(name, ...packageNames(join(nodeModules, name, 'node_modules')));
  }
  return names;
}

/** Compiled addons: what a native build leaves behind. */
function nativeFiles(dir: string): string[] {
  return readdirSync(dir, { recursive: true, encoding: 'utf8' }).filter((path) => path.endsWith('.node'));
}

/** The worker a user would write: plain ESM, no TypeScript, no loader. */
const WORKER = `
import { CommitdClient, isApiError } from '@commitd/client';

const client = new CommitdClient({ url: process.argv[2], retry: { maxAttempts: 1 } });
const committed = await client.commit({ main: [{ sql: 'INSERT INTO orders (id) VALUES (?)', params: ['order-1'] }] });
let refused;
try {
  await client.commit({ nosuch: [{ sql: 'SELECT 1' }] });
} catch (error) {
  refused = isApiError(error, 'invalid_request') ? { code: error.code, status: error.status } : String(error);
}
console.log(JSON.stringify({ committed, refused }));
`;

/** A participant's use of the barrier subpath, plain ESM, with no database driver installed. */
const PARTICIPANT = `
import { barrierSchema, parseParticipantCall, participantRoutes } from '@commitd/client/participant';

const call = parseParticipantCall('try', { key: 'k', attempt: 'a', store: 'stock', changes: [{ action: 'reserve' }] }, 'k');
console.log(JSON.stringify({ call, schema: barrierSchema('postgres').startsWith('CREATE TABLE IF NOT EXISTS commitd_barrier'), routes: typeof participantRoutes }));
`;

describe('@commitd/client packed and installed on its own', { timeout: 300_000 }, () => {
  let dir: string;
  let app: string;
  let commitd: ProcessService | undefined;

  before(async () => {
    dir = makeTempDir('client-package');
    const packed = join(dir, 'packed');
    mkdirSync(packed);
    // `npm pack` runs the package's prepare script: the tarball holds a fresh build.
    const { stdout } = await npm(['pack', '--json', '--pack-destination', packed, '--workspace', '@commitd/client'], ROOT);
    const [{ filename }] = JSON.parse(stdout) as [{ filename: string }];

    app = join(dir, 'app');
    mkdirSync(app);
    writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'worker-app', version: '1.0.0', private: true, type: 'module' }));
    writeFileSync(join(app, 'worker.mjs'), WORKER);
    writeFileSync(join(app, 'participant.mjs'), PARTICIPANT);
    // --prefer-offline: the SDK's few dependencies come from the npm cache when they are there.
    await npm(['install', '--prefer-offline', '--no-audit', '--no-fund', join(packed, filename)], app);

    const data = join(dir, 'data');
    mkdirSync(data);
    const db = new Database(join(data, 'main.db'));
    db.exec('CREATE TABLE orders (id TEXT PRIMARY KEY)');
    db.close();
    commitd = await startProcess({ dir: data, stores: [{ name: 'main', type: 'sqlite', options: { path: join(data, 'main.db') } }] });
  });

  after(async () => {
    await commitd?.process.stop();
    await removeTempDir(dir);
  });

  it('installs without the server and without native code', () => {
    const packages = packageNames(join(app, 'node_modules'));
    assert.ok(packages.includes('@commitd/client'), `installed: ${packages.join(', ')}`);
    assert.deepEqual(
      packages.filter((name) => SERVER_PACKAGES.includes(name)),
      [],
    );
    assert.deepEqual(nativeFiles(join(app, 'node_modules')), []);
  });

  it('commits a one-shot from a plain ESM worker', async () => {
    const { stdout } = await run(process.execPath, ['worker.mjs', commitd!.url], { cwd: app, timeout: 60_000 });
    const { committed, refused } = JSON.parse(stdout) as {
      committed: { key: string; state: string; sessionId: string; stores: Record<string, string> };
      refused: unknown;
    };
    assert.equal(committed.state, 'committed');
    assert.match(committed.sessionId, /^[0-9a-f]{32}$/);
    assert.deepEqual(Object.keys(committed.stores), ['main']);
    assert.deepEqual(refused, { code: 'invalid_request', status: 400 });

    const db = new Database(join(dir, 'data', 'main.db'), { readonly: true });
    try {
      assert.deepEqual(db.prepare('SELECT id FROM orders').all(), [{ id: 'order-1' }]);
    } finally {
      db.close();
    }
  });

  it('serves the participant barrier as @commitd/client/participant', async () => {
    const { stdout } = await run(process.execPath, ['participant.mjs'], { cwd: app, timeout: 60_000 });
    assert.deepEqual(JSON.parse(stdout), {
      call: { phase: 'try', key: 'k', attempt: 'a', store: 'stock', changes: [{ action: 'reserve' }] },
      schema: true,
      routes: 'function',
    });
  });
});

import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { CommitdClient } from '@commitd/client';
import { DEFAULT_URL, UsageError, VERSION, parseInvocation, type Command } from '../src/cli/args.ts';
import { fields, formatSession, formatSessions, formatStores, table } from '../src/cli/format.ts';
import { EXIT, run, type CliIo } from '../src/cli/run.ts';
import { makeTempDir, removeTempDir, type TrackedProcess } from './harness/child.ts';
import { freePort } from './harness/ports.ts';
import { runCommitd, spawnCommitd, type CommitdEnv } from './support/process.ts';
import { sqliteRun } from './support/rows.ts';

// ---------------------------------------------------------------------------------------
// Pure parts
// ---------------------------------------------------------------------------------------

/** The text of a help or version command. */
function helpText(command: Command): string {
  assert.equal(command.name, 'help');
  return command.name === 'help' ? command.text : '';
}

describe('commitd arguments', () => {
  const parse = (argv: string, env: Record<string, string> = {}) => parseInvocation(argv.split(' ').filter(Boolean), env);

  it('reads each command', () => {
    assert.deepEqual(parse('serve').command, { name: 'serve' });
    assert.deepEqual(parse('sessions list').command, { name: 'sessions list' });
    assert.deepEqual(parse('sessions list --state failed').command, { name: 'sessions list', state: 'failed' });
    assert.deepEqual(parse('sessions list --state committed --limit 20 --cursor abc_-1').command, {
      name: 'sessions list',
      state: 'committed',
      limit: 20,
      cursor: 'abc_-1',
    });
    assert.deepEqual(parse('sessions list --state abandoned').command, { name: 'sessions list', state: 'abandoned' });
    assert.deepEqual(parse('sessions show order-1').command, { name: 'sessions show', key: 'order-1' });
    assert.deepEqual(parse('sessions cancel order-1').command, { name: 'sessions cancel', key: 'order-1' });
    assert.deepEqual(parse('sessions resolve order-1 retry').command, { name: 'sessions resolve', key: 'order-1', action: 'retry' });
    assert.deepEqual(parse('sessions resolve order-1 abandon').command, { name: 'sessions resolve', key: 'order-1', action: 'abandon' });
    assert.deepEqual(parse('stores list').command, { name: 'stores list' });
    assert.deepEqual(parseInvocation(['stores', 'add', 'audit', 'sqlite', '--options', '{"path":"audit.db"}'], {}).command, {
      name: 'stores add',
      store: 'audit',
      type: 'sqlite',
      options: { path: 'audit.db' },
    });
    assert.deepEqual(parse('stores add cache redis').command, { name: 'stores add', store: 'cache', type: 'redis', options: {} });
    assert.deepEqual(parse('stores remove audit').command, { name: 'stores remove', store: 'audit' });
    assert.deepEqual(parse('recover --once').command, { name: 'recover' });
    assert.match(helpText(parse('--help').command), /^Usage: commitd \[options\] \[command\]/);
    assert.match(helpText(parse('sessions -h').command), /^Usage: commitd sessions/);
    assert.equal(helpText(parse('--version').command), VERSION);
  });

  it('takes --url and --token, then COMMITD_URL and COMMITD_TOKEN, then the default', () => {
    const env = { COMMITD_URL: 'http://env:1', COMMITD_TOKEN: 'from-env' };
    assert.deepEqual(parse('stores list --url http://flag:2 --token t --json', env), {
      command: { name: 'stores list' },
      url: 'http://flag:2',
      token: 't',
      json: true,
    });
    assert.deepEqual(parse('stores list', env), { command: { name: 'stores list' }, url: 'http://env:1', token: 'from-env', json: false });
    assert.deepEqual(parse('stores list'), { command: { name: 'stores list' }, url: DEFAULT_URL, token: undefined, json: false });
  });

  it('refuses what it cannot run, saying why', () => {
    const cases: [string, RegExp][] = [
      ['', /no command given/],
      ['frobnicate', /unknown command 'frobnicate'/],
      ['sessions', /"sessions" needs a command: list, show, cancel, resolve/],
      ['sessions show', /missing required argument 'key'/],
      ['sessions show a b', /too many arguments for 'show'/],
      ['sessions list --state gone', /argument 'gone' is invalid. Allowed choices are active, committing, failed, committed, abandoned/],
      ['sessions list --limit 0', /'--limit <n>' argument '0' is invalid. a whole number from 1 to 1000/],
      ['sessions resolve k maybe', /'maybe' is invalid for argument 'action'. Allowed choices are retry, abandon/],
      ['stores add audit sqlite --options nope', /'--options <json>' argument 'nope' is invalid/],
      ['stores list --state failed', /unknown option '--state'/],
      ['recover', /--once/],
      ['stores list --once', /unknown option '--once'/],
      ['stores list --bogus', /unknown option '--bogus'/],
      ['stores drop', /unknown command 'drop'/],
      ['stores list --url ftp://x', /--url must be an http\(s\) URL/],
    ];
    for (const [argv, message] of cases)
      assert.throws(
        () => parse(argv),
        (error) => error instanceof UsageError && message.test(error.message),
        argv,
      );
  });
});

describe('commitd output', () => {
  it('aligns table columns without trailing spaces', () => {
    assert.equal(
      table(
        ['NAME', 'TYPE'],
        [
          ['main', 'sqlite'],
          ['audit-log', 'postgres'],
        ],
      ),
      ['NAME       TYPE', 'main       sqlite', 'audit-log  postgres'].join('\n'),
    );
    assert.equal(table(['A', 'B'], [['x', '']]), 'A  B\nx');
  });

  it('lists fields, leaving out empty ones and keeping multi-line values in their column', () => {
    assert.equal(
      fields([
        ['key', 'k'],
        ['owner', undefined],
        ['stores', 'a 1\nb 2'],
      ]),
      ['key     k', 'stores  a 1', '        b 2'].join('\n'),
    );
  });

  it('shows a committed session with one store ID per line', () => {
    const text = formatSession({ key: 'k', state: 'committed', sessionId: 'ff', stores: { audit: '01', main: '02' }, committedAt: '2025-01-01T00:00:00.000Z' });
    assert.equal(
      text,
      [
        'key         k',
        'state       committed',
        'session id  ff',
        'stores      audit  01',
        '            main   02',
        'committed   2025-01-01T00:00:00.000Z',
      ].join('\n'),
    );
  });

  it('says so when a list is empty', () => {
    assert.equal(formatSessions([]), 'no sessions');
    assert.equal(formatStores([]), 'no stores');
    assert.match(
      formatSessions([{ key: 'k', state: 'failed', stores: ['main'], error: 'UNIQUE constraint failed' }]),
      /^KEY\s+STATE\s+STORES\s+OWNER\s+STARTED\s+ERROR\nk\s+failed\s+main\s+UNIQUE constraint failed$/,
    );
  });
});

/** `run` with captured output. */
async function runCaptured(argv: readonly string[], env: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  const out: string[] = [];
  const err: string[] = [];
  const io: CliIo = {
    env,
    stdout: (text) => out.push(text),
    stderr: (text) => err.push(text),
    serve: async () => {
      throw new Error('not in this test');
    },
  };
  const code = await run(argv, io);
  return { code, stdout: out.join('\n'), stderr: err.join('\n') };
}

describe('commitd exit codes (no server)', () => {
  it('usage errors exit 2 with one line', async () => {
    const result = await runCaptured(['sessions', 'show']);
    assert.equal(result.code, EXIT.usage);
    assert.equal(result.stdout, '');
    assert.match(result.stderr, /^commitd: usage: missing required argument 'key' \(see commitd --help\)$/);
  });

  it('an unreachable server exits 3 with one line', async () => {
    const port = await freePort();
    const result = await runCaptured(['stores', 'list'], { COMMITD_URL: `http://127.0.0.1:${port}` });
    assert.equal(result.code, EXIT.unreachable);
    assert.match(result.stderr, new RegExp(`^commitd: unreachable: cannot reach http://127\\.0\\.0\\.1:${port}/v1/stores: ECONNREFUSED$`));
  });

  it('--help prints the usage and exits 0', async () => {
    const result = await runCaptured(['--help']);
    assert.equal(result.code, EXIT.ok);
    assert.match(result.stdout, /^Usage: commitd \[options\] \[command\]/);
    assert.match(result.stdout, /sessions/);
  });

  it('--version prints the version and exits 0', async () => {
    const result = await runCaptured(['--version']);
    assert.equal(result.code, EXIT.ok);
    assert.equal(result.stdout, VERSION);
  });

  it('under --json an error is one JSON document on stderr', async () => {
    const usage = await runCaptured(['sessions', 'show', '--json']);
    assert.equal(usage.code, EXIT.usage);
    assert.deepEqual(JSON.parse(usage.stderr), { code: 'usage', detail: "missing required argument 'key'" });
    const port = await freePort();
    const unreachable = await runCaptured(['stores', 'list', '--json'], { COMMITD_URL: `http://127.0.0.1:${port}` });
    assert.equal(unreachable.code, EXIT.unreachable);
    assert.deepEqual(JSON.parse(unreachable.stderr), { code: 'unreachable', detail: `cannot reach http://127.0.0.1:${port}/v1/stores: ECONNREFUSED` });
  });
});

// ---------------------------------------------------------------------------------------
// The executable against a real commitd, itself started with `commitd serve`
// ---------------------------------------------------------------------------------------

/** Runs `bin/commitd.mjs` to completion. */
const commitd = runCommitd;

/** `commitd serve` over `dir` (which holds `commitd.json`) on `port`, ready. */
async function serve(dir: string, port: number, extraEnv: CommitdEnv = {}): Promise<TrackedProcess> {
  const server = await spawnCommitd({
    bin: ['serve'],
    env: { COMMITD_PORT: String(port), COMMITD_DATA_DIR: dir, COMMITD_CONFIG: join(dir, 'commitd.json'), COMMITD_LOG_LEVEL: 'warn', ...extraEnv },
  });
  await server.waitReady(async () => (await fetch(`http://127.0.0.1:${port}/readyz`)).ok, { timeoutMs: 30_000, what: 'commitd /readyz' });
  return server;
}

/** A temp dir with a config of two sqlite stores, `main` and `audit`. */
function configuredDir(label: string): string {
  const dir = makeTempDir(label);
  const stores = ['main', 'audit'].map((name) => ({ name, type: 'sqlite', options: { path: join(dir, `${name}.db`) } }));
  writeFileSync(join(dir, 'commitd.json'), JSON.stringify({ stores }));
  return dir;
}

/** Asserts one line on stderr, nothing on stdout, and the exit code. */
function assertFailure(result: { code: number; stdout: string; stderr: string }, code: number, line: RegExp): void {
  assert.equal(result.code, code, result.stderr);
  assert.equal(result.stdout, '');
  assert.equal(result.stderr.split('\n').filter(Boolean).length, 1, result.stderr);
  assert.match(result.stderr.trimEnd(), line);
}

describe('commitd executable against a real commitd', () => {
  let dir: string;
  let server: TrackedProcess;
  let url: string;
  let committedId: string;

  before(async () => {
    dir = configuredDir('cli');
    const port = await freePort();
    url = `http://127.0.0.1:${port}`;
    server = await serve(dir, port);
    const client = new CommitdClient({ url });
    committedId = (await client.commit('cli-1', { main: [{ sql: 'CREATE TABLE t (x)' }], audit: [{ sql: 'CREATE TABLE a (x)' }] })).sessionId;
  });
  after(async () => {
    await server?.stop();
    if (dir) await removeTempDir(dir);
  });

  it('stores list: a table, or JSON with --json', async () => {
    const human = await commitd(['stores', 'list', '--url', url]);
    assert.equal(human.code, 0, human.stderr);
    assert.equal(human.stdout, 'NAME   TYPE\naudit  sqlite\nmain   sqlite\n');
    const json = await commitd(['stores', 'list', '--json'], { COMMITD_URL: url });
    assert.equal(json.code, 0, json.stderr);
    const listed = JSON.parse(json.stdout) as { name: string; type: string; origin: string; status: string }[];
    assert.deepEqual(
      listed.map(({ name, type, origin, status }) => ({ name, type, origin, status })),
      [
        { name: 'audit', type: 'sqlite', origin: 'config', status: 'open' },
        { name: 'main', type: 'sqlite', origin: 'config', status: 'open' },
      ],
      'the listing as the server gives it',
    );
  });

  it('sessions show: fields, or the session as JSON', async () => {
    const human = await commitd(['sessions', 'show', 'cli-1', '--url', url]);
    assert.equal(human.code, 0, human.stderr);
    assert.match(human.stdout, /^key\s+cli-1$/m);
    assert.match(human.stdout, /^state\s+committed$/m);
    assert.match(human.stdout, new RegExp(`^session id\\s+${committedId}$`, 'm'));
    assert.match(human.stdout, /^stores\s+audit\s+[0-9a-f]{32}\n\s+main\s+[0-9a-f]{32}$/m);
    const json = await commitd(['sessions', 'show', 'cli-1', '--url', url, '--json']);
    assert.equal(json.code, 0, json.stderr);
    const session = JSON.parse(json.stdout) as { key: string; state: string; sessionId: string; stores: Record<string, string> };
    assert.equal(session.key, 'cli-1');
    assert.equal(session.state, 'committed');
    assert.equal(session.sessionId, committedId);
    assert.deepEqual(Object.keys(session.stores).sort(), ['audit', 'main']);
  });

  it('sessions list and cancel an open session; then it is gone', async () => {
    const client = new CommitdClient({ url });
    await client.session('cli-open', { stores: ['main'] });
    const listed = await commitd(['sessions', 'list', '--state', 'active', '--url', url]);
    assert.equal(listed.code, 0, listed.stderr);
    assert.match(listed.stdout, /^KEY\s+STATE\s+STORES/);
    assert.match(listed.stdout, /^cli-open\s+active\s+main\s/m);
    const cancelled = await commitd(['sessions', 'cancel', 'cli-open', '--url', url]);
    assert.equal(cancelled.code, 0, cancelled.stderr);
    assert.equal(cancelled.stdout, 'cancelled cli-open\n');
    assertFailure(await commitd(['sessions', 'show', 'cli-open', '--url', url]), 1, /^commitd: not_found: no session under key "cli-open"$/);
  });

  it('sessions resolve: a committed key answers its result; an unknown one is a problem, as JSON under --json', async () => {
    const human = await commitd(['sessions', 'resolve', 'cli-1', 'retry', '--url', url]);
    assert.equal(human.code, 0, human.stderr);
    assert.match(human.stdout, /^state\s+committed$/m);
    const refused = await commitd(['sessions', 'resolve', 'no-such-key', 'abandon', '--url', url, '--json']);
    assert.equal(refused.code, 1);
    assert.equal(refused.stdout, '');
    const problem = JSON.parse(refused.stderr) as Record<string, unknown>;
    assert.equal(problem.code, 'not_found');
    assert.equal(problem.status, 404);
    assert.match(String(problem.type), /not_found$/);
    assert.match(String(problem.detail), /no-such-key/);
  });

  it('stores add and remove', async () => {
    const path = join(dir, 'extra.db');
    const added = await commitd(['stores', 'add', 'extra', 'sqlite', '--options', JSON.stringify({ path }), '--url', url]);
    assert.equal(added.code, 0, added.stderr);
    assert.equal(added.stdout, 'added extra (sqlite)\n');
    assert.match((await commitd(['stores', 'list', '--url', url])).stdout, /^extra\s+sqlite$/m);
    const again = await commitd(['stores', 'add', 'extra', 'sqlite', '--options', JSON.stringify({ path }), '--url', url]);
    assert.equal(again.code, 1, 'a second registration is refused');
    assert.match(again.stderr, /^commitd: \w+: /);
    const removed = await commitd(['stores', 'remove', 'extra', '--url', url, '--json']);
    assert.equal(removed.code, 0, removed.stderr);
    assert.deepEqual(JSON.parse(removed.stdout), { name: 'extra', removed: true });
    assert.doesNotMatch((await commitd(['stores', 'list', '--url', url])).stdout, /extra/);
    assertFailure(await commitd(['stores', 'remove', 'extra', '--url', url]), 1, /^commitd: not_found: /);
  });

  it('sessions list pages with --limit and --cursor, committed ones too (where the server pages)', async (t) => {
    // The listing's server side (committed and abandoned history, cursors) is DESIGN's
    // "HTTP API v1" contract; a server that predates it ignores limit and cursor.
    const document = (await (await fetch(`${url}/docs/json`)).json()) as { paths: Record<string, { get?: { parameters?: { name: string }[] } }> };
    if (!document.paths['/v1/sessions']?.get?.parameters?.some((parameter) => parameter.name === 'cursor')) {
      t.skip('this server does not page session listings yet');
      return;
    }
    const client = new CommitdClient({ url });
    for (const key of ['cli-page-1', 'cli-page-2', 'cli-page-3']) await client.commit(key, { main: [{ sql: 'INSERT INTO t (x) VALUES (?)', params: [key] }] });
    const first = await commitd(['sessions', 'list', '--state', 'committed', '--limit', '2', '--url', url, '--json']);
    assert.equal(first.code, 0, first.stderr);
    const page = JSON.parse(first.stdout) as { sessions: { key: string; state: string }[]; nextCursor?: string };
    assert.deepEqual(
      page.sessions.map((session) => session.key),
      ['cli-page-3', 'cli-page-2'],
      'newest first',
    );
    assert.ok(page.nextCursor);
    const human = await commitd(['sessions', 'list', '--state', 'committed', '--limit', '2', '--url', url]);
    assert.match(human.stdout, /^KEY\s+STATE\s+SESSION ID\s+COMMITTED\ncli-page-3\s+committed\s+[0-9a-f]{32}\s+\S+/);
    assert.match(human.stdout, /\nmore: --cursor \S+\n$/);
    const rest = await commitd(['sessions', 'list', '--state', 'committed', '--limit', '1000', '--cursor', page.nextCursor, '--url', url, '--json']);
    const keys = (JSON.parse(rest.stdout) as { sessions: { key: string }[] }).sessions.map((session) => session.key);
    assert.ok(keys.includes('cli-page-1') && keys.includes('cli-1') && !keys.includes('cli-page-3'), keys.join(','));
  });

  it('recover --once with nothing failed says so and exits 0', async () => {
    const result = await commitd(['recover', '--once', '--url', url]);
    assert.equal(result.code, 0, result.stderr);
    assert.equal(result.stdout, 'no failed sessions\n');
    const json = await commitd(['recover', '--once', '--json', '--url', url]);
    assert.deepEqual(JSON.parse(json.stdout), []);
  });

  it('an unknown key: exit 1 and one line', async () => {
    assertFailure(await commitd(['sessions', 'show', 'no-such-key', '--url', url]), 1, /^commitd: not_found: no session under key "no-such-key"$/);
    assertFailure(
      await commitd(['sessions', 'cancel', 'no-such-key', '--url', url, '--json']),
      1,
      /^\{"type":"https:\/\/commitd\.dev\/problems\/not_found",.*"code":"not_found"\}$/,
    );
  });

  it('a refused request names the contract code', async () => {
    assertFailure(await commitd(['sessions', 'show', 'not a key!', '--url', url]), 1, /^commitd: invalid_request: /);
  });

  it('an unreachable URL: exit 3 and one line', async () => {
    const port = await freePort();
    assertFailure(await commitd(['stores', 'list', '--url', `http://127.0.0.1:${port}`]), 3, /^commitd: unreachable: cannot reach .*ECONNREFUSED$/);
  });

  it('bad usage: exit 2 and one line', async () => {
    assertFailure(await commitd(['sessions', 'show']), 2, /^commitd: usage: /);
    assertFailure(await commitd(['stores', 'drop']), 2, /^commitd: usage: unknown command 'drop'/);
    assertFailure(await commitd(['--nope']), 2, /^commitd: usage: unknown option '--nope'/);
  });
});

describe('commitd recover --once', () => {
  it('reports a failed session, and rolls it forward once its conflict is gone', async () => {
    const dir = configuredDir('cli-recover');
    const port = await freePort();
    const url = `http://127.0.0.1:${port}`;
    const sql = (store: string, statement: string, ...params: unknown[]) => sqliteRun(join(dir, `${store}.db`), statement, ...params);
    sql('main', 'CREATE TABLE orders (id TEXT PRIMARY KEY, note TEXT NOT NULL)');
    sql('audit', 'CREATE TABLE audit_log (id TEXT PRIMARY KEY, note TEXT NOT NULL)');
    let server: TrackedProcess | undefined;
    try {
      // Crash after `audit` (first by name) committed; then another writer takes the row `main` needs.
      const crashing = await serve(dir, port, { COMMITD_FAILPOINTS: 'commit.afterStore.1=crash' });
      const changes = {
        main: [{ sql: 'INSERT INTO orders (id, note) VALUES (?, ?)', params: ['o-1', 'from commitd'] }],
        audit: [{ sql: 'INSERT INTO audit_log (id, note) VALUES (?, ?)', params: ['o-1', 'audited'] }],
      };
      await assert.rejects(new CommitdClient({ url, retry: { maxAttempts: 1 } }).commit('cli-failed', changes));
      assert.equal((await crashing.waitForExit()).signal, 'SIGKILL');
      sql('main', 'INSERT INTO orders (id, note) VALUES (?, ?)', 'o-1', 'another writer');

      server = await serve(dir, port);
      const client = new CommitdClient({ url });
      for (let i = 0; (await client.get('cli-failed'))?.state !== 'failed'; i++) {
        assert.ok(i < 100, 'the restarted commitd marks the session failed');
        await sleep(100);
      }

      const listed = await commitd(['sessions', 'list', '--state', 'failed', '--url', url]);
      assert.equal(listed.code, 0, listed.stderr);
      assert.match(listed.stdout, /^cli-failed\s+failed\s+audit,main\s.*\S$/m);

      const stillFailing = await commitd(['recover', '--once', '--url', url]);
      assert.equal(stillFailing.code, 1, 'a session that fails again is exit 1');
      assert.match(stillFailing.stdout, /^KEY\s+RESULT\s+DETAIL\ncli-failed\s+failed\s+store_conflict: session "cli-failed" failed and awaits an operator/);
      assert.doesNotMatch(stillFailing.stdout, /roll-forward\)/, 'no pseudo-store name');
      // Progress on stderr: what it does, and the counts as it goes.
      assert.deepEqual(stillFailing.stderr.trimEnd().split('\n'), [
        'recover: listing failed sessions',
        'recover: 1 failed session to retry',
        'recover: [1/1] retrying cli-failed',
        'recover: [1/1] cli-failed: failed (0 committed, 1 still failed, 0 refused)',
      ]);

      sql('main', 'DELETE FROM orders WHERE id = ?', 'o-1');
      const recovered = await commitd(['recover', '--once', '--json', '--url', url]);
      assert.equal(recovered.code, 0, recovered.stdout + recovered.stderr);
      assert.deepEqual(JSON.parse(recovered.stdout), [{ key: 'cli-failed', result: 'committed', detail: '' }]);
      assert.equal((await client.get('cli-failed'))?.state, 'committed');
    } finally {
      await server?.stop();
      await removeTempDir(dir);
    }
  });
});

/**
 * Who may do what (DESIGN.md "Auth and scopes"): the scope matrix — every route with no
 * token, a wrong one, a token of each scope and `COMMITD_TOKEN` — answered by a real
 * service through `app.inject()`; tokens limited to stores; and the token configuration
 * commitd refuses to start with.
 */
import assert from 'node:assert/strict';
import { createHash, randomUUID } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { FastifyInstance, InjectOptions, LightMyRequestResponse } from 'fastify';
import { pino } from 'pino';
import { ConfigError, loadConfig } from '../src/config.ts';
import { buildApp } from '../src/http/app.ts';
import { SCOPES, type Scope, type TokenEntry, parseTokenEntries } from '../src/http/tokens.ts';
import { makeTempDir, removeTempDir } from './harness/child.ts';
import { makeFailedSession } from './support/failed-session.ts';
import { sqliteRun } from './support/rows.ts';
import { startTestService, type TestService } from './support/service.ts';

const ROOT = 'root-secret-0123456789';
const secretOf = (name: string) => `secret-of-${name}-0123456789`;
const sha256 = (text: string) => createHash('sha256').update(text).digest('hex');

type Method = 'GET' | 'POST' | 'DELETE';

interface Request {
  readonly method: Method;
  readonly url: string;
  readonly body?: unknown;
  readonly headers?: Readonly<Record<string, string>>;
}

async function send(app: FastifyInstance, request: Request, secret?: string): Promise<LightMyRequestResponse> {
  const headers: Record<string, string> = { ...request.headers };
  if (secret !== undefined) headers.authorization = `Bearer ${secret}`;
  const options: InjectOptions = { method: request.method, url: request.url, headers };
  if (request.body !== undefined) {
    headers['content-type'] = 'application/json';
    options.payload = JSON.stringify(request.body);
  }
  return app.inject(options);
}

/** Who sends: nobody, a stranger, a token of one scope, or `COMMITD_TOKEN` (every scope). */
type Sender = 'none' | 'wrong' | Scope | 'token';
const SENDERS: readonly Sender[] = ['none', 'wrong', ...SCOPES, 'token'];

function secretFor(sender: Sender): string | undefined {
  if (sender === 'none') return undefined;
  if (sender === 'wrong') return 'not-a-configured-token';
  if (sender === 'token') return ROOT;
  return secretOf(sender);
}

/**
 * A route of the matrix: who may call it (`open`: anyone; `any`: any valid token; else the
 * scopes any one of which admits), the status it answers when admitted, and how to build a
 * request that succeeds — set up with `COMMITD_TOKEN`, fresh for every cell.
 */
interface RouteCase {
  readonly name: string;
  readonly admits: 'open' | 'any' | readonly Scope[];
  readonly ok: number;
  readonly prepare: () => Promise<Request>;
}

describe('HTTP API v1 scopes', () => {
  let service: TestService;
  let app: FastifyInstance;
  const fresh = (prefix: string) => `${prefix}-${randomUUID().slice(0, 8)}`;
  const root = async (request: Request, status: number) => {
    const response = await send(app, request, ROOT);
    assert.equal(response.statusCode, status, `${request.method} ${request.url}: ${response.body}`);
    return response;
  };
  const change = (key: string) => ({ sql: 'INSERT INTO scoped(k) VALUES (?)', params: [key] });

  before(async () => {
    const env = Object.fromEntries(SCOPES.map((scope) => [`SCOPE_${scope.toUpperCase()}`, secretOf(scope)]));
    // Half the tokens by hash, half by environment variable: both ways the file may name them.
    const entries: TokenEntry[] = SCOPES.map((scope, i) =>
      i % 2 === 0
        ? { name: scope, sha256: sha256(secretOf(scope)), scopes: [scope] }
        : { name: scope, tokenEnv: `SCOPE_${scope.toUpperCase()}`, scopes: [scope] },
    );
    entries.push({ name: 'main-writer', sha256: sha256(secretOf('main-writer')), scopes: ['commit'], stores: ['main'] });
    entries.push({ name: 'main-operator', sha256: sha256(secretOf('main-operator')), scopes: ['commit', 'operate'], stores: ['main'] });
    const tokens = parseTokenEntries(entries, env, 'auth.tokens', ['token']);
    service = await startTestService({ kv: 'sqlite', token: ROOT, tokens });
    app = service.app;
    for (const store of ['main', 'audit']) sqliteRun(join(service.dir, `${store}.db`), 'CREATE TABLE scoped (k TEXT)');
  });
  after(async () => {
    await service?.dispose();
  });

  const begun = async (prefix: string) => {
    const key = fresh(prefix);
    await root({ method: 'POST', url: '/v1/sessions', body: { key, stores: ['main'] } }, 201);
    return key;
  };

  const routes: RouteCase[] = [
    {
      name: 'begin',
      admits: ['commit'],
      ok: 201,
      prepare: async () => ({ method: 'POST', url: '/v1/sessions', body: { key: fresh('begin'), stores: ['main'] } }),
    },
    {
      name: 'apply changes',
      admits: ['commit'],
      ok: 200,
      prepare: async () => {
        const key = await begun('apply');
        return { method: 'POST', url: `/v1/sessions/${key}/changes`, body: { store: 'main', changes: [change(key)] } };
      },
    },
    {
      name: 'commit',
      admits: ['commit'],
      ok: 200,
      prepare: async () => {
        const key = await begun('commit');
        await root({ method: 'POST', url: `/v1/sessions/${key}/changes`, body: { store: 'main', changes: [change(key)] } }, 200);
        return { method: 'POST', url: `/v1/sessions/${key}/commit` };
      },
    },
    { name: 'cancel', admits: ['commit', 'operate'], ok: 200, prepare: async () => ({ method: 'POST', url: `/v1/sessions/${await begun('cancel')}/cancel` }) },
    { name: 'get a session', admits: ['commit', 'read'], ok: 200, prepare: async () => ({ method: 'GET', url: `/v1/sessions/${await begun('get')}` }) },
    { name: 'list sessions', admits: ['read'], ok: 200, prepare: async () => ({ method: 'GET', url: '/v1/sessions' }) },
    { name: 'list committed sessions', admits: ['read'], ok: 200, prepare: async () => ({ method: 'GET', url: '/v1/sessions?state=committed&limit=2' }) },
    {
      name: 'resolve (abandon)',
      admits: ['operate'],
      ok: 200,
      prepare: async () => {
        const key = fresh('resolve');
        await makeFailedSession(service, key);
        return { method: 'POST', url: `/v1/sessions/${key}/resolve`, body: { action: 'abandon' } };
      },
    },
    {
      name: 'one-shot commit',
      admits: ['commit'],
      ok: 200,
      prepare: async () => {
        const key = fresh('once');
        return { method: 'POST', url: '/v1/commits', body: { key, changes: { main: [change(key)] } } };
      },
    },
    { name: 'list stores', admits: ['read'], ok: 200, prepare: async () => ({ method: 'GET', url: '/v1/stores' }) },
    {
      name: 'register a store',
      admits: ['admin'],
      ok: 201,
      prepare: async () => {
        const name = fresh('s').replace(/-/g, '_');
        return { method: 'POST', url: '/v1/stores', body: { name, type: 'sqlite', options: { path: join(service.dir, `${name}.db`) } } };
      },
    },
    {
      name: 'remove a store',
      admits: ['admin'],
      ok: 204,
      prepare: async () => {
        const name = fresh('r').replace(/-/g, '_');
        await root({ method: 'POST', url: '/v1/stores', body: { name, type: 'sqlite', options: { path: join(service.dir, `${name}.db`) } } }, 201);
        return { method: 'DELETE', url: `/v1/stores/${name}` };
      },
    },
    { name: 'metrics', admits: ['metrics'], ok: 200, prepare: async () => ({ method: 'GET', url: '/metrics' }) },
    { name: 'liveness', admits: 'open', ok: 200, prepare: async () => ({ method: 'GET', url: '/healthz' }) },
    { name: 'readiness', admits: 'open', ok: 200, prepare: async () => ({ method: 'GET', url: '/readyz' }) },
    { name: 'OpenAPI document', admits: 'any', ok: 200, prepare: async () => ({ method: 'GET', url: '/docs/json' }) },
    { name: 'list instances', admits: ['read'], ok: 200, prepare: async () => ({ method: 'GET', url: '/v1/instances' }) },
    {
      name: 'a session’s change log',
      admits: ['read'],
      ok: 200,
      prepare: async () => {
        const key = fresh('log');
        await makeFailedSession(service, key);
        return { method: 'GET', url: `/v1/sessions/${key}/log` };
      },
    },
    {
      name: 'metrics as JSON (console)',
      admits: ['metrics'],
      ok: 200,
      prepare: async () => ({ method: 'GET', url: '/metrics', headers: { accept: 'application/json' } }),
    },
    { name: 'console', admits: 'any', ok: 200, prepare: async () => ({ method: 'GET', url: '/ui' }) },
  ];

  /** The status `sender` must get from `route`. */
  function expected(route: RouteCase, sender: Sender): number {
    if (route.admits === 'open') return route.ok;
    if (sender === 'none' || sender === 'wrong') return 401;
    if (route.admits === 'any' || sender === 'token') return route.ok;
    return route.admits.includes(sender) ? route.ok : 403;
  }

  it('answers each route as the matrix says, for every sender', async () => {
    const mismatches: string[] = [];
    for (const route of routes) {
      for (const sender of SENDERS) {
        const request = await route.prepare();
        const response = await send(app, request, secretFor(sender));
        const want = expected(route, sender);
        if (response.statusCode !== want) mismatches.push(`${route.name} as ${sender}: expected ${want}, got ${response.statusCode} ${response.body}`);
        if (want === 401 || want === 403) {
          assert.match(String(response.headers['content-type']), /^application\/problem\+json/);
          assert.equal(response.json().code, want === 401 ? 'unauthorized' : 'forbidden', `${route.name} as ${sender}`);
          assert.match(String(response.headers['www-authenticate']), want === 403 ? /error="insufficient_scope"/ : /^Bearer realm/);
        }
      }
    }
    assert.deepEqual(mismatches, []);
  });

  it('does nothing behind a 403: the begin, the one-shot and the store are not there', async () => {
    const key = fresh('denied');
    assert.equal((await send(app, { method: 'POST', url: '/v1/sessions', body: { key } }, secretOf('read'))).statusCode, 403);
    assert.equal((await send(app, { method: 'POST', url: '/v1/commits', body: { key, changes: { main: [change(key)] } } }, secretOf('admin'))).statusCode, 403);
    await root({ method: 'GET', url: `/v1/sessions/${key}` }, 404);
    const body = { name: 'denied_store', type: 'sqlite', options: { path: join(service.dir, 'denied.db') } };
    assert.equal((await send(app, { method: 'POST', url: '/v1/stores', body }, secretOf('operate'))).statusCode, 403);
    const stores = (await root({ method: 'GET', url: '/v1/stores' }, 200)).json().stores as { name: string }[];
    assert.ok(!stores.some((store) => store.name === 'denied_store'));
  });

  describe('a token limited to stores', () => {
    const writer = secretOf('main-writer');

    it('begins, applies and commits on its store', async () => {
      const key = fresh('mw');
      assert.equal((await send(app, { method: 'POST', url: '/v1/sessions', body: { key, stores: ['main'] } }, writer)).statusCode, 201);
      assert.equal(
        (await send(app, { method: 'POST', url: `/v1/sessions/${key}/changes`, body: { store: 'main', changes: [change(key)] } }, writer)).statusCode,
        200,
      );
      assert.equal((await send(app, { method: 'POST', url: `/v1/sessions/${key}/commit` }, writer)).statusCode, 200);
      const once = fresh('mw-once');
      assert.equal((await send(app, { method: 'POST', url: '/v1/commits', body: { key: once, changes: { main: [change(once)] } } }, writer)).statusCode, 200);
    });

    it('is refused (403, nothing begun) a begin, change or one-shot naming another store', async () => {
      const key = fresh('mw-no');
      const cases: [string, Request][] = [
        ['begin on another store', { method: 'POST', url: '/v1/sessions', body: { key, stores: ['main', 'audit'] } }],
        ['begin on every store (no "stores")', { method: 'POST', url: '/v1/sessions', body: { key } }],
        ['one-shot touching another store', { method: 'POST', url: '/v1/commits', body: { key, changes: { main: [change(key)], audit: [change(key)] } } }],
      ];
      for (const [what, request] of cases) {
        const response = await send(app, request, writer);
        assert.equal(response.statusCode, 403, `${what}: ${response.body}`);
        assert.equal(response.json().code, 'forbidden');
        assert.match(response.json().detail, /main-writer/);
      }
      await root({ method: 'GET', url: `/v1/sessions/${key}` }, 404);

      // A session another token began on both stores: this token may not write to audit.
      const shared = fresh('mw-shared');
      await root({ method: 'POST', url: '/v1/sessions', body: { key: shared } }, 201);
      const refused = await send(app, { method: 'POST', url: `/v1/sessions/${shared}/changes`, body: { store: 'audit', changes: [change(shared)] } }, writer);
      assert.equal(refused.statusCode, 403, refused.body);
      assert.match(refused.json().detail, /audit/);
      await root({ method: 'POST', url: `/v1/sessions/${shared}/changes`, body: { store: 'audit', changes: [change(shared)] } }, 200);
      // Nor may it commit or cancel that session; the session stays as it was.
      for (const action of ['commit', 'cancel']) {
        const response = await send(app, { method: 'POST', url: `/v1/sessions/${shared}/${action}` }, writer);
        assert.equal(response.statusCode, 403, `${action}: ${response.body}`);
        assert.match(response.json().detail, /audit/);
      }
      assert.equal((await root({ method: 'GET', url: `/v1/sessions/${shared}` }, 200)).json().state, 'active');
      // With operate besides, a token limited to main cancels any session.
      assert.equal((await send(app, { method: 'POST', url: `/v1/sessions/${shared}/cancel` }, secretOf('main-operator'))).statusCode, 200);
      // A key without a session is answered by the route, as for any token.
      assert.equal((await send(app, { method: 'POST', url: `/v1/sessions/${fresh('none')}/commit` }, writer)).statusCode, 404);
    });

    it('has only its scopes: listing sessions is refused', async () => {
      assert.equal((await send(app, { method: 'GET', url: '/v1/sessions' }, writer)).statusCode, 403);
    });
  });
});

describe('token configuration', () => {
  const dir = makeTempDir('tokens');
  after(async () => {
    await removeTempDir(dir);
  });

  let n = 0;
  /** loadConfig over a config file with `auth` (and `env` besides COMMITD_CONFIG). */
  function load(auth: unknown, env: Record<string, string> = {}) {
    const path = join(dir, `config-${n++}.json`);
    writeFileSync(path, JSON.stringify({ auth }));
    return loadConfig({ COMMITD_CONFIG: path, ...env });
  }
  const hash = sha256('s3cret');

  it('resolves tokens by hash and by environment variable, never keeping the secret', () => {
    const config = load(
      {
        tokens: [
          { name: 'worker', sha256: hash, scopes: ['commit'], stores: ['main'] },
          { name: 'ops', tokenEnv: 'OPS_TOKEN', scopes: ['read', 'operate'] },
        ],
      },
      { OPS_TOKEN: 'ops-secret' },
    );
    assert.deepEqual(
      config.tokens.map((token) => [token.name, token.sha256.toString('hex'), [...token.scopes], token.stores && [...token.stores]]),
      [
        ['worker', hash, ['commit'], ['main']],
        ['ops', sha256('ops-secret'), ['read', 'operate'], undefined],
      ],
    );
    assert.ok(!JSON.stringify(config).includes('ops-secret'));
  });

  it('refuses bad token entries with one line naming the field', () => {
    const cases: [string, unknown, RegExp, Record<string, string>?][] = [
      [
        'unknown scope',
        { tokens: [{ name: 'a', sha256: hash, scopes: ['commit', 'write'] }] },
        /auth\.tokens\[0\]\.scopes\[1\]: unknown scope "write" \(scopes: commit, read, operate, admin, metrics\)/,
      ],
      [
        'both hash and env',
        { tokens: [{ name: 'a', sha256: hash, tokenEnv: 'X', scopes: ['read'] }] },
        /auth\.tokens\[0\]: give either sha256 or tokenEnv, not both/,
      ],
      ['neither hash nor env', { tokens: [{ name: 'a', scopes: ['read'] }] }, /auth\.tokens\[0\]: needs sha256 .* or tokenEnv/],
      [
        'tokenEnv unset',
        { tokens: [{ name: 'a', tokenEnv: 'NOT_SET_ANYWHERE', scopes: ['read'] }] },
        /auth\.tokens\[0\]\.tokenEnv: the environment variable NOT_SET_ANYWHERE is unset or empty/,
      ],
      ['tokenEnv empty', { tokens: [{ name: 'a', tokenEnv: 'EMPTY', scopes: ['read'] }] }, /EMPTY is unset or empty/, { EMPTY: '' }],
      [
        'duplicate name',
        {
          tokens: [
            { name: 'a', sha256: hash, scopes: ['read'] },
            { name: 'a', sha256: sha256('other'), scopes: ['commit'] },
          ],
        },
        /auth\.tokens\[1\]\.name: "a" is used by an earlier token/,
      ],
      [
        'name of COMMITD_TOKEN',
        { tokens: [{ name: 'token', sha256: hash, scopes: ['read'] }] },
        /auth\.tokens\[0\]\.name: "token" is the name of COMMITD_TOKEN/,
        { COMMITD_TOKEN: 'x' },
      ],
      [
        'a hash that is not SHA-256 hex',
        { tokens: [{ name: 'a', sha256: 's3cret', scopes: ['read'] }] },
        /auth\.tokens\[0\]\.sha256: must be the SHA-256 of the token as 64 hex digits/,
      ],
      ['no scopes', { tokens: [{ name: 'a', sha256: hash, scopes: [] }] }, /auth\.tokens\[0\]\.scopes: must name at least one/],
      [
        'empty store list',
        { tokens: [{ name: 'a', sha256: hash, scopes: ['commit'], stores: [] }] },
        /auth\.tokens\[0\]\.stores: must name at least one store/,
      ],
      ['the token itself', { tokens: [{ name: 'a', token: 's3cret', scopes: ['read'] }] }, /auth\.tokens\/0\/token|tokens\[0\]\.token: is not allowed/],
    ];
    for (const [what, auth, message, env] of cases) {
      assert.throws(
        () => load(auth, env),
        (err: unknown) => err instanceof ConfigError && message.test(err.message) && !err.message.includes('\n'),
        `${what}: expected ${message}`,
      );
    }
  });

  it('serves beyond loopback with file tokens only (no COMMITD_TOKEN)', async () => {
    const tokens = parseTokenEntries([{ name: 'reader', sha256: hash, scopes: ['read'] }], {}, 'auth.tokens');
    const service = await startTestService({ kv: 'sqlite', host: '0.0.0.0', tokens });
    try {
      assert.equal((await send(service.app, { method: 'GET', url: '/v1/stores' })).statusCode, 401);
      assert.equal((await send(service.app, { method: 'GET', url: '/v1/stores' }, 's3cret')).statusCode, 200);
      assert.equal((await send(service.app, { method: 'GET', url: '/metrics' }, 's3cret')).statusCode, 403);
    } finally {
      await service.dispose();
    }
  });

  it('accepts every configured token at once (rotation: add the new one, deploy, remove the old)', async () => {
    const tokens = parseTokenEntries(
      [
        { name: 'worker-2025', sha256: sha256('old-secret'), scopes: ['read'] },
        { name: 'worker-2026', sha256: sha256('new-secret'), scopes: ['read'] },
      ],
      {},
      'auth.tokens',
    );
    const service = await startTestService({ kv: 'sqlite', tokens });
    try {
      for (const secret of ['old-secret', 'new-secret']) assert.equal((await send(service.app, { method: 'GET', url: '/v1/stores' }, secret)).statusCode, 200);
    } finally {
      await service.dispose();
    }
  });
});

describe('route declarations', () => {
  it("shows each route's scopes in the OpenAPI document, and the probes as open", async () => {
    const service = await startTestService({ kv: 'sqlite', token: ROOT });
    try {
      const doc = (await send(service.app, { method: 'GET', url: '/docs/json' }, ROOT)).json();
      assert.match(doc.paths['/v1/sessions/{key}/resolve'].post.description, /\n\nNeeds a token with the scope `operate`\.$/);
      assert.match(doc.paths['/v1/sessions/{key}'].get.description, /\n\nNeeds a token with the scope `commit` or `read`\.$/);
      assert.deepEqual(doc.paths['/readyz'].get.security, []);
      assert.deepEqual(doc.paths['/healthz'].get.security, []);
    } finally {
      await service.dispose();
    }
  });

  it('refuses to build an app with an API route that declares no scopes', async () => {
    const service = await startTestService({ kv: 'sqlite' });
    try {
      const app = await buildApp({ coordinator: service.coordinator, metrics: service.metrics, logger: pino({ level: 'silent' }) });
      assert.throws(() => app.get('/v1/undeclared', async () => ({})), /route GET \/v1\/undeclared declares no scopes/);
      await app.close();
    } finally {
      await service.dispose();
    }
  });
});

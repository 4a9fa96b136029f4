/**
 * HTTP API v1 contract (DESIGN.md): every route and every error code, answered through
 * `app.inject()` by the real coordinator over the real KV and real sqlite stores, on both
 * KV backends. Malformed input must be a 4xx problem that commits nothing.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { FastifyInstance, InjectOptions, LightMyRequestResponse } from 'fastify';
import { ChangeRejectedError } from '../src/stores/helper.ts';
import { IdempotencyKeyMismatchError } from '../src/errors/core.ts';
import { UnavailableError } from '../src/kv/errors.ts';
import { NotCanonicalizableError } from '../src/core/session-id.ts';
import { ServiceUnavailableError, StoreConflictError } from '../src/coordinator/errors.ts';
import { isLoopbackHost } from '../src/http/auth.ts';
import { problemFor } from '../src/http/problems.ts';
import { makeTempDir, removeTempDir } from './harness/child.ts';
import { skipUnlessFound } from './harness/require.ts';
import { sqliteRows, sqliteRun } from './support/rows.ts';
import { KV_BACKENDS, kvNeeds, startTestService, type KvBackend, type TestService } from './support/service.ts';

const PROBLEM_JSON = /^application\/problem\+json/;
const JSON_TYPE = /^application\/json/;
const HEX_ID = /^[0-9a-f]{32}$/;

type Method = 'GET' | 'POST' | 'DELETE' | 'PUT' | 'PATCH';

interface Call {
  readonly body?: unknown;
  /** Sent as is, with its own content type (default application/json). */
  readonly raw?: string;
  readonly contentType?: string;
  readonly headers?: Readonly<Record<string, string>>;
  readonly token?: string;
}

/** One request through `inject`; objects go as JSON, `raw` as written. */
async function call(app: FastifyInstance, method: Method, url: string, request: Call = {}): Promise<LightMyRequestResponse> {
  const headers: Record<string, string> = { ...request.headers };
  if (request.token !== undefined) headers.authorization = `Bearer ${request.token}`;
  const options: InjectOptions = { method, url, headers };
  if (request.raw !== undefined) {
    headers['content-type'] = request.contentType ?? 'application/json';
    options.payload = request.raw;
  } else if (request.body !== undefined) {
    headers['content-type'] = request.contentType ?? 'application/json';
    options.payload = JSON.stringify(request.body);
  }
  return app.inject(options);
}

/** The JSON body of a response, as a record. */
function body(response: LightMyRequestResponse): Record<string, unknown> {
  const parsed: unknown = response.json();
  assert.ok(typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed), `a JSON object, got ${response.body}`);
  return parsed as Record<string, unknown>;
}

/** Asserts an RFC 9457 problem with the contract's members, and returns it. */
function assertProblem(response: LightMyRequestResponse, status: number, code: string): Record<string, unknown> {
  assert.equal(response.statusCode, status, `expected ${status} ${code}, got ${response.statusCode}: ${response.body}`);
  assert.match(String(response.headers['content-type']), PROBLEM_JSON);
  const problem = body(response);
  assert.equal(problem.code, code, response.body);
  assert.equal(problem.status, status);
  assert.equal(problem.type, `https://commitd.dev/problems/${code}`);
  assert.equal(typeof problem.title, 'string');
  assert.equal(typeof problem.detail, 'string');
  return problem;
}

function assertOk(response: LightMyRequestResponse, status = 200): Record<string, unknown> {
  assert.equal(response.statusCode, status, response.body);
  assert.match(String(response.headers['content-type']), JSON_TYPE);
  return body(response);
}

/** An `items` table with a unique name, in each sqlite store of the service. */
function createTables(service: TestService, stores: readonly string[] = ['main', 'audit']): void {
  for (const store of stores)
    sqliteRun(join(service.dir, `${store}.db`), 'CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL)');
}

/** Names in `items` of a store, in insertion order. */
function itemNames(service: TestService, store: string): string[] {
  return sqliteRows<{ name: string }>(join(service.dir, `${store}.db`), 'SELECT name FROM items ORDER BY id').map((row) => row.name);
}

const insert = (name: string) => ({ sql: 'INSERT INTO items (name) VALUES (?)', params: [name] });

let unique = 0;
/** A fresh idempotency key per use, so tests sharing a service never meet. */
const freshKey = (label: string) => `${label}-${process.pid}-${++unique}`;

for (const kv of KV_BACKENDS) {
  describe(`HTTP API v1 contract (kv: ${kv})`, { skip: skipUnlessFound(kvNeeds(kv)) }, () => {
    let service: TestService;
    let app: FastifyInstance;

    before(async () => {
      service = await startTestService({ kv });
      app = service.app;
      createTables(service);
    });
    after(async () => {
      await service?.dispose();
    });

    describe('sessions', () => {
      it('begins (201), applies, commits (200), and answers every retry the same', async () => {
        const key = freshKey('flow');
        const begun = assertOk(await call(app, 'POST', '/v1/sessions', { body: { key } }), 201);
        assert.equal(begun.key, key);
        assert.equal(begun.state, 'active');
        assert.equal(begun.recovery, false);

        const applied = assertOk(
          await call(app, 'POST', `/v1/sessions/${key}/changes`, { body: { store: 'main', changes: [insert(`${key}-a`), insert(`${key}-b`)] } }),
        );
        assert.deepEqual(applied, { key, store: 'main', applied: 2 });
        assertOk(await call(app, 'POST', `/v1/sessions/${key}/changes`, { body: { store: 'audit', changes: [insert(`${key}-c`)] } }));

        const active = assertOk(await call(app, 'GET', `/v1/sessions/${key}`));
        assert.equal(active.state, 'active');

        // No body and no content type: how `curl -X POST` commits.
        const committed = assertOk(await call(app, 'POST', `/v1/sessions/${key}/commit`));
        assert.equal(committed.key, key);
        assert.equal(committed.state, 'committed');
        assert.match(String(committed.sessionId), HEX_ID);
        assert.deepEqual(Object.keys(committed.stores as object).sort(), ['audit', 'main']);
        assert.deepEqual(
          itemNames(service, 'main').filter((name) => name.startsWith(key)),
          [`${key}-a`, `${key}-b`],
        );
        assert.deepEqual(
          itemNames(service, 'audit').filter((name) => name.startsWith(key)),
          [`${key}-c`],
        );

        const retried = assertOk(await call(app, 'POST', `/v1/sessions/${key}/commit`, { body: {} }));
        assert.equal(retried.sessionId, committed.sessionId);
        assert.deepEqual(retried.stores, committed.stores);

        const shown = assertOk(await call(app, 'GET', `/v1/sessions/${key}`));
        assert.equal(shown.state, 'committed');
        assert.equal(shown.sessionId, committed.sessionId);

        // Beginning a committed key replays its result: 200, not a new session.
        const replay = assertOk(await call(app, 'POST', '/v1/sessions', { body: { key } }));
        assert.equal(replay.state, 'committed');
        assert.equal(replay.sessionId, committed.sessionId);
        assert.deepEqual(
          itemNames(service, 'main').filter((name) => name.startsWith(key)),
          [`${key}-a`, `${key}-b`],
          'applied once',
        );
      });

      it('takes the key from the Idempotency-Key header (bare or quoted) and begins on chosen stores', async () => {
        const key = freshKey('header');
        const begun = assertOk(await call(app, 'POST', '/v1/sessions', { headers: { 'idempotency-key': key }, body: { stores: ['main'] } }), 201);
        assert.equal(begun.key, key);
        assert.deepEqual(begun.stores, ['main']);
        assertOk(
          await call(app, 'POST', `/v1/sessions/${key}/changes`, {
            headers: { 'idempotency-key': `"${key}"` },
            body: { store: 'main', changes: [insert(key)] },
          }),
        );
        const committed = assertOk(await call(app, 'POST', `/v1/sessions/${key}/commit`, { headers: { 'idempotency-key': key } }));
        assert.deepEqual(Object.keys(committed.stores as object), ['main']);

        const quoted = freshKey('quoted');
        assertOk(await call(app, 'POST', '/v1/sessions', { headers: { 'idempotency-key': `"${quoted}"` } }), 201);
        assertOk(await call(app, 'POST', `/v1/sessions/${quoted}/cancel`));
      });

      it('cancels: 200 cancelled, then the session is gone (404) and nothing was written', async () => {
        const key = freshKey('cancel');
        assertOk(await call(app, 'POST', '/v1/sessions', { body: { key } }), 201);
        assertOk(await call(app, 'POST', `/v1/sessions/${key}/changes`, { body: { store: 'main', changes: [insert(key)] } }));
        assert.deepEqual(assertOk(await call(app, 'POST', `/v1/sessions/${key}/cancel`)), { key, state: 'cancelled' });
        assertProblem(await call(app, 'GET', `/v1/sessions/${key}`), 404, 'not_found');
        assert.ok(!itemNames(service, 'main').includes(key));
      });

      it('lists open sessions, by state', async () => {
        const key = freshKey('listed');
        assertOk(await call(app, 'POST', '/v1/sessions', { body: { key } }), 201);
        const active = assertOk(await call(app, 'GET', '/v1/sessions?state=active'));
        assert.ok(Array.isArray(active.sessions));
        assert.ok((active.sessions as { key: string }[]).some((session) => session.key === key));
        for (const state of ['failed', 'committing']) {
          const listed = assertOk(await call(app, 'GET', `/v1/sessions?state=${state}`));
          assert.ok(!(listed.sessions as { key: string }[]).some((session) => session.key === key), `${key} is not ${state}`);
        }
        const all = assertOk(await call(app, 'GET', '/v1/sessions'));
        assert.ok((all.sessions as { key: string }[]).some((session) => session.key === key));
        assertOk(await call(app, 'POST', `/v1/sessions/${key}/cancel`, { body: {} }));
      });

      it('resolve: 404 for an unknown key, 409 session_busy for a session that has not failed', async () => {
        assertProblem(await call(app, 'POST', `/v1/sessions/${freshKey('unresolved')}/resolve`, { body: { action: 'abandon' } }), 404, 'not_found');
        const key = freshKey('resolve-active');
        assertOk(await call(app, 'POST', '/v1/sessions', { body: { key } }), 201);
        assertProblem(await call(app, 'POST', `/v1/sessions/${key}/resolve`, { body: { action: 'retry' } }), 409, 'session_busy');
        assertOk(await call(app, 'POST', `/v1/sessions/${key}/cancel`));
      });
    });

    describe('one-shot commits', () => {
      it('commits in one request (200), replays the same answer, refuses other changes under the key (422)', async () => {
        const key = freshKey('once');
        const request = { body: { key, changes: { main: [insert(`${key}-m`)], audit: [insert(`${key}-a`)] } } };
        const committed = assertOk(await call(app, 'POST', '/v1/commits', request));
        assert.equal(committed.state, 'committed');
        assert.match(String(committed.sessionId), HEX_ID);
        assert.deepEqual(Object.keys(committed.stores as object).sort(), ['audit', 'main']);
        const again = assertOk(await call(app, 'POST', '/v1/commits', request));
        assert.equal(again.sessionId, committed.sessionId);
        assert.deepEqual(
          itemNames(service, 'main').filter((name) => name.startsWith(key)),
          [`${key}-m`],
        );

        assertProblem(await call(app, 'POST', '/v1/commits', { body: { key, changes: { main: [insert(`${key}-other`)] } } }), 422, 'key_reused');
        assert.ok(!itemNames(service, 'main').includes(`${key}-other`));
        assertOk(await call(app, 'GET', `/v1/sessions/${key}`));
      });

      it('takes the key from the header', async () => {
        const key = freshKey('once-header');
        const committed = assertOk(await call(app, 'POST', '/v1/commits', { headers: { 'idempotency-key': key }, body: { changes: { main: [insert(key)] } } }));
        assert.equal(committed.key, key);
      });
    });

    describe('stores', () => {
      it('lists, registers (201), uses and removes (204) a store', async () => {
        const listed = assertOk(await call(app, 'GET', '/v1/stores'));
        assert.deepEqual((listed.stores as { name: string; type: string }[]).map((store) => `${store.name}:${store.type}`).sort(), [
          'audit:sqlite',
          'main:sqlite',
        ]);

        const added = assertOk(
          await call(app, 'POST', '/v1/stores', { body: { name: 'extra', type: 'sqlite', options: { path: join(service.dir, 'extra.db') } } }),
          201,
        );
        assert.equal(added.name, 'extra');
        assert.equal(added.type, 'sqlite');
        assert.equal(added.origin, 'runtime');
        assert.equal(added.registeredBy, 'anonymous');
        assert.ok((body(await call(app, 'GET', '/v1/stores')).stores as { name: string }[]).some((store) => store.name === 'extra'));
        createTables(service, ['extra']);

        const key = freshKey('extra');
        const committed = assertOk(await call(app, 'POST', '/v1/commits', { body: { key, changes: { extra: [insert(key)] } } }));
        assert.deepEqual(Object.keys(committed.stores as object), ['extra']);

        const removed = await call(app, 'DELETE', '/v1/stores/extra');
        assert.equal(removed.statusCode, 204, removed.body);
        assert.equal(removed.body, '');
        assert.ok(!(body(await call(app, 'GET', '/v1/stores')).stores as { name: string }[]).some((store) => store.name === 'extra'));
        assertProblem(await call(app, 'DELETE', '/v1/stores/extra'), 404, 'not_found');
      });

      it('refuses a store of an unknown type or with bad options (400)', async () => {
        assertProblem(await call(app, 'POST', '/v1/stores', { body: { name: 'ghost', type: 'nosuchtype', options: {} } }), 400, 'invalid_request');
        assertProblem(await call(app, 'POST', '/v1/stores', { body: { name: 'ghost', type: 'sqlite', options: { path: 7 } } }), 400, 'invalid_request');
        assertProblem(await call(app, 'POST', '/v1/stores', { body: { name: '9lives', type: 'sqlite', options: {} } }), 400, 'invalid_request');
        assert.ok(!(body(await call(app, 'GET', '/v1/stores')).stores as { name: string }[]).some((store) => store.name === 'ghost'));
      });
    });

    describe('operations', () => {
      it('GET /healthz and /readyz answer 200', async () => {
        assert.deepEqual(assertOk(await call(app, 'GET', '/healthz')), { status: 'ok' });
        assert.deepEqual(assertOk(await call(app, 'GET', '/readyz')), {
          status: 'ok',
          stores: [
            { name: 'audit', status: 'up' },
            { name: 'main', status: 'up' },
          ],
        });
      });

      it('GET /metrics serves Prometheus text', async () => {
        const response = await call(app, 'GET', '/metrics');
        assert.equal(response.statusCode, 200);
        assert.match(String(response.headers['content-type']), /^text\/plain/);
        assert.match(response.body, /^# HELP commitd_sessions_committed_total /m);
        assert.match(response.body, /^commitd_sessions_begun_total \d+/m);
      });

      it('GET /docs serves the UI and /docs/json the OpenAPI document of every contract route', async () => {
        const ui = await call(app, 'GET', '/docs');
        assert.equal(ui.statusCode, 200);
        assert.match(String(ui.headers['content-type']), /^text\/html/);
        const document = assertOk(await call(app, 'GET', '/docs/json'));
        assert.match(String(document.openapi), /^3\./);
        const paths = document.paths as Record<string, Record<string, unknown>>;
        const routes = Object.entries(paths).flatMap(([path, operations]) => Object.keys(operations).map((method) => `${method.toUpperCase()} ${path}`));
        for (const route of [
          'POST /v1/sessions',
          'POST /v1/sessions/{key}/changes',
          'POST /v1/sessions/{key}/commit',
          'POST /v1/sessions/{key}/cancel',
          'GET /v1/sessions/{key}',
          'GET /v1/sessions',
          'POST /v1/sessions/{key}/resolve',
          'POST /v1/commits',
          'GET /v1/stores',
          'POST /v1/stores',
          'DELETE /v1/stores/{name}',
          'GET /healthz',
          'GET /readyz',
          'GET /metrics',
        ]) {
          assert.ok(routes.includes(route), `${route} is documented`);
        }
      });
    });

    describe('error codes', () => {
      it('400 invalid_request: an unknown store, a change outside its store type’s schema', async () => {
        assertProblem(await call(app, 'POST', '/v1/sessions', { body: { key: freshKey('unknown-store'), stores: ['nosuchstore'] } }), 400, 'invalid_request');
        const key = freshKey('bad-change');
        assertOk(await call(app, 'POST', '/v1/sessions', { body: { key } }), 201);
        assertProblem(
          await call(app, 'POST', `/v1/sessions/${key}/changes`, { body: { store: 'nosuchstore', changes: [insert(key)] } }),
          400,
          'invalid_request',
        );
        assertProblem(await call(app, 'POST', `/v1/sessions/${key}/changes`, { body: { store: 'main', changes: [{ sql: 42 }] } }), 400, 'invalid_request');
        assertProblem(
          await call(app, 'POST', `/v1/sessions/${key}/changes`, { body: { store: 'main', changes: [{ command: ['SET', 'a', 'b'] }] } }),
          400,
          'invalid_request',
        );
        assertProblem(
          await call(app, 'POST', '/v1/commits', { body: { key: freshKey('once-unknown'), changes: { nosuchstore: [insert('x')] } } }),
          400,
          'invalid_request',
        );
        assertOk(await call(app, 'POST', `/v1/sessions/${key}/cancel`));
      });

      it('404 not_found: no such session, for every session route', async () => {
        const key = freshKey('never');
        assertProblem(await call(app, 'GET', `/v1/sessions/${key}`), 404, 'not_found');
        assertProblem(await call(app, 'POST', `/v1/sessions/${key}/changes`, { body: { store: 'main', changes: [insert(key)] } }), 404, 'not_found');
        assertProblem(await call(app, 'POST', `/v1/sessions/${key}/commit`), 404, 'not_found');
        assertProblem(await call(app, 'POST', `/v1/sessions/${key}/cancel`), 404, 'not_found');
        assert.ok(!itemNames(service, 'main').includes(key));
      });

      it('409 session_busy: beginning a key held by a live session', async () => {
        const key = freshKey('busy');
        assertOk(await call(app, 'POST', '/v1/sessions', { body: { key } }), 201);
        assertProblem(await call(app, 'POST', '/v1/sessions', { body: { key } }), 409, 'session_busy');
        assertProblem(await call(app, 'POST', '/v1/commits', { body: { key, changes: { main: [insert(key)] } } }), 409, 'session_busy');
        assertOk(await call(app, 'POST', `/v1/sessions/${key}/cancel`));
      });

      it('409 store_conflict: a statement on a missing table, naming the store', async () => {
        const key = freshKey('missing-table');
        assertOk(await call(app, 'POST', '/v1/sessions', { body: { key } }), 201);
        // SQLite may refuse at apply (the statement does not compile) or at commit (prepare).
        const applied = await call(app, 'POST', `/v1/sessions/${key}/changes`, {
          body: { store: 'main', changes: [{ sql: 'INSERT INTO no_such_table (x) VALUES (1)' }] },
        });
        const answer = applied.statusCode === 200 ? await call(app, 'POST', `/v1/sessions/${key}/commit`) : applied;
        const problem = assertProblem(answer, 409, 'store_conflict');
        assert.equal(problem.store, 'main');
        assert.match(String(problem.detail), /no_such_table/);
        await call(app, 'POST', `/v1/sessions/${key}/cancel`);
      });

      it('409 store_conflict: a UNIQUE violation at commit, nothing written to any store', async () => {
        const taken = freshKey('taken');
        assertOk(await call(app, 'POST', '/v1/commits', { body: { key: freshKey('first'), changes: { main: [insert(taken)] } } }));

        const key = freshKey('unique');
        assertOk(await call(app, 'POST', '/v1/sessions', { body: { key } }), 201);
        assertOk(await call(app, 'POST', `/v1/sessions/${key}/changes`, { body: { store: 'audit', changes: [insert(key)] } }));
        assertOk(await call(app, 'POST', `/v1/sessions/${key}/changes`, { body: { store: 'main', changes: [insert(`${key}-fresh`), insert(taken)] } }));
        const problem = assertProblem(await call(app, 'POST', `/v1/sessions/${key}/commit`), 409, 'store_conflict');
        assert.equal(problem.store, 'main');
        assert.match(String(problem.storeCode ?? problem.detail), /CONSTRAINT|UNIQUE/);
        assert.ok(!itemNames(service, 'main').includes(`${key}-fresh`));
        assert.ok(!itemNames(service, 'audit').includes(key));
        assert.notEqual(body(await call(app, 'GET', `/v1/sessions/${key}`)).state, 'committed');

        const once = freshKey('unique-once');
        assertProblem(
          await call(app, 'POST', '/v1/commits', { body: { key: once, changes: { main: [insert(taken)], audit: [insert(once)] } } }),
          409,
          'store_conflict',
        );
        assert.ok(!itemNames(service, 'audit').includes(once));
      });

      it('422 key_reused: a committed key begun again with other stores', async () => {
        const key = freshKey('reused');
        assertOk(await call(app, 'POST', '/v1/commits', { body: { key, changes: { main: [insert(key)] } } }));
        assertProblem(await call(app, 'POST', '/v1/sessions', { body: { key, stores: ['audit'] } }), 422, 'key_reused');
      });

      it('413 payload_too_large: a body over the limit', async () => {
        const key = freshKey('large');
        const changes = Array.from({ length: 2000 }, (_, i) => insert(`${key}-${i}-${'x'.repeat(600)}`));
        assertProblem(await call(app, 'POST', '/v1/commits', { body: { key, changes: { main: changes } } }), 413, 'payload_too_large');
        assertProblem(await call(app, 'GET', `/v1/sessions/${key}`), 404, 'not_found');
      });
    });

    describe('malformed input: a 4xx problem, nothing committed, the service still answering', () => {
      interface Case {
        readonly name: string;
        readonly method: Method;
        readonly url: string;
        readonly request?: Call;
        readonly status: number;
        readonly code: string;
      }
      const key = freshKey('malformed');
      const open = freshKey('malformed-open');
      const good = { main: [insert(`${key}-row`)] };
      const cases: Case[] = [
        { name: 'bad JSON (begin)', method: 'POST', url: '/v1/sessions', request: { raw: '{"key":' }, status: 400, code: 'invalid_request' },
        {
          name: 'bad JSON (changes)',
          method: 'POST',
          url: `/v1/sessions/${open}/changes`,
          request: { raw: '{"store":"main","changes":[' },
          status: 400,
          code: 'invalid_request',
        },
        {
          name: 'bad JSON (one-shot)',
          method: 'POST',
          url: '/v1/commits',
          request: { raw: `{"key":"${key}","changes":{"main":[}}` },
          status: 400,
          code: 'invalid_request',
        },
        { name: 'a JSON array body', method: 'POST', url: '/v1/commits', request: { raw: '[]' }, status: 400, code: 'invalid_request' },
        {
          name: 'wrong content type',
          method: 'POST',
          url: '/v1/commits',
          request: { raw: `key=${key}`, contentType: 'application/x-www-form-urlencoded' },
          status: 415,
          code: 'unsupported_media_type',
        },
        {
          name: 'text body',
          method: 'POST',
          url: '/v1/commits',
          request: { raw: JSON.stringify({ key, changes: good }), contentType: 'text/plain' },
          status: 415,
          code: 'unsupported_media_type',
        },
        {
          name: 'key of the wrong type',
          method: 'POST',
          url: '/v1/commits',
          request: { body: { key: 42, changes: good } },
          status: 400,
          code: 'invalid_request',
        },
        {
          name: 'changes not an object',
          method: 'POST',
          url: '/v1/commits',
          request: { body: { key, changes: [insert(key)] } },
          status: 400,
          code: 'invalid_request',
        },
        {
          name: 'changes of a store not an array',
          method: 'POST',
          url: '/v1/commits',
          request: { body: { key, changes: { main: insert(key) } } },
          status: 400,
          code: 'invalid_request',
        },
        {
          name: 'a change not an object',
          method: 'POST',
          url: '/v1/commits',
          request: { body: { key, changes: { main: ['INSERT INTO items (name) VALUES (1)'] } } },
          status: 400,
          code: 'invalid_request',
        },
        { name: 'no changes at all', method: 'POST', url: '/v1/commits', request: { body: { key, changes: {} } }, status: 400, code: 'invalid_request' },
        { name: 'stores not an array', method: 'POST', url: '/v1/sessions', request: { body: { key, stores: 'main' } }, status: 400, code: 'invalid_request' },
        {
          name: 'an unknown body field',
          method: 'POST',
          url: '/v1/commits',
          request: { body: { key, changes: good, extra: true } },
          status: 400,
          code: 'invalid_request',
        },
        {
          name: 'an unknown store (one-shot)',
          method: 'POST',
          url: '/v1/commits',
          request: { body: { key, changes: { nosuchstore: [insert(key)] } } },
          status: 400,
          code: 'invalid_request',
        },
        {
          name: 'an unknown store (begin)',
          method: 'POST',
          url: '/v1/sessions',
          request: { body: { key, stores: ['main', 'nosuchstore'] } },
          status: 400,
          code: 'invalid_request',
        },
        {
          name: 'an invalid store name',
          method: 'POST',
          url: '/v1/commits',
          request: { body: { key, changes: { 'no such store': [insert(key)] } } },
          status: 400,
          code: 'invalid_request',
        },
        {
          name: 'an unknown store (changes)',
          method: 'POST',
          url: `/v1/sessions/${open}/changes`,
          request: { body: { store: 'nosuchstore', changes: [insert(key)] } },
          status: 400,
          code: 'invalid_request',
        },
        { name: 'no key anywhere', method: 'POST', url: '/v1/commits', request: { body: { changes: good } }, status: 400, code: 'invalid_request' },
        {
          name: 'key "a b" in the body',
          method: 'POST',
          url: '/v1/commits',
          request: { body: { key: 'a b', changes: good } },
          status: 400,
          code: 'invalid_request',
        },
        {
          name: 'key "ü" in the body',
          method: 'POST',
          url: '/v1/commits',
          request: { body: { key: 'ü', changes: good } },
          status: 400,
          code: 'invalid_request',
        },
        {
          name: 'a 201-character key in the body',
          method: 'POST',
          url: '/v1/commits',
          request: { body: { key: 'k'.repeat(201), changes: good } },
          status: 400,
          code: 'invalid_request',
        },
        { name: 'an empty key in the body', method: 'POST', url: '/v1/sessions', request: { body: { key: '' } }, status: 400, code: 'invalid_request' },
        {
          name: 'key "a b" in the header',
          method: 'POST',
          url: '/v1/commits',
          request: { headers: { 'idempotency-key': 'a b' }, body: { changes: good } },
          status: 400,
          code: 'invalid_request',
        },
        {
          name: 'a 201-character key in the header',
          method: 'POST',
          url: '/v1/sessions',
          request: { headers: { 'idempotency-key': 'k'.repeat(201) } },
          status: 400,
          code: 'invalid_request',
        },
        { name: 'key "a b" in the path', method: 'POST', url: '/v1/sessions/a%20b/commit', status: 400, code: 'invalid_request' },
        { name: 'key "ü" in the path', method: 'GET', url: '/v1/sessions/%C3%BC', status: 400, code: 'invalid_request' },
        {
          name: 'a 201-character key in the path',
          method: 'POST',
          url: `/v1/sessions/${'k'.repeat(201)}/changes`,
          request: { body: { store: 'main', changes: [insert(key)] } },
          status: 400,
          code: 'invalid_request',
        },
        {
          name: 'header and body keys disagree (begin)',
          method: 'POST',
          url: '/v1/sessions',
          request: { headers: { 'idempotency-key': `${key}-other` }, body: { key } },
          status: 400,
          code: 'invalid_request',
        },
        {
          name: 'header and body keys disagree (one-shot)',
          method: 'POST',
          url: '/v1/commits',
          request: { headers: { 'idempotency-key': `${key}-other` }, body: { key, changes: good } },
          status: 400,
          code: 'invalid_request',
        },
        {
          name: 'header and path keys disagree',
          method: 'POST',
          url: `/v1/sessions/${open}/commit`,
          request: { headers: { 'idempotency-key': key } },
          status: 400,
          code: 'invalid_request',
        },
        { name: 'an unknown session state filter', method: 'GET', url: '/v1/sessions?state=exploded', status: 400, code: 'invalid_request' },
        {
          name: 'an unknown resolve action',
          method: 'POST',
          url: `/v1/sessions/${open}/resolve`,
          request: { body: { action: 'shrug' } },
          status: 400,
          code: 'invalid_request',
        },
        {
          name: 'a body on commit',
          method: 'POST',
          url: `/v1/sessions/${open}/commit`,
          request: { body: { force: true } },
          status: 400,
          code: 'invalid_request',
        },
        {
          name: 'a body over the limit',
          method: 'POST',
          url: '/v1/commits',
          request: { body: { key, changes: { main: [{ sql: 'INSERT INTO items (name) VALUES (?)', params: ['x'.repeat(1024 * 1024)] }] } } },
          status: 413,
          code: 'payload_too_large',
        },
        { name: 'an unknown route', method: 'GET', url: '/v2/sessions', status: 404, code: 'not_found' },
        { name: 'an unknown route under /v1', method: 'POST', url: `/v1/sessions/${open}/explode`, status: 404, code: 'not_found' },
        { name: 'a wrong method', method: 'PUT', url: '/v1/commits', request: { body: { key, changes: good } }, status: 405, code: 'method_not_allowed' },
        { name: 'a wrong method on a session', method: 'DELETE', url: `/v1/sessions/${open}`, status: 405, code: 'method_not_allowed' },
      ];

      let rowsBefore: Record<string, number>;

      before(async () => {
        assertOk(await call(app, 'POST', '/v1/sessions', { body: { key: open } }), 201);
        rowsBefore = { main: itemNames(service, 'main').length, audit: itemNames(service, 'audit').length };
      });

      for (const malformed of cases) {
        it(`${malformed.name} → ${malformed.status} ${malformed.code}`, async () => {
          assertProblem(await call(app, malformed.method, malformed.url, malformed.request), malformed.status, malformed.code);
        });
      }

      it('leaves the service answering and nothing committed', async () => {
        assert.deepEqual(assertOk(await call(app, 'GET', '/healthz')), { status: 'ok' });
        assertProblem(await call(app, 'GET', `/v1/sessions/${key}`), 404, 'not_found');
        assertProblem(await call(app, 'GET', `/v1/sessions/${key}-other`), 404, 'not_found');
        const stillOpen = assertOk(await call(app, 'GET', `/v1/sessions/${open}`));
        assert.equal(stillOpen.state, 'active');
        assert.deepEqual({ main: itemNames(service, 'main').length, audit: itemNames(service, 'audit').length }, rowsBefore);
        // The open session is unharmed by the bad requests against it: it still commits.
        assertOk(await call(app, 'POST', `/v1/sessions/${open}/changes`, { body: { store: 'main', changes: [insert(open)] } }));
        assert.equal(assertOk(await call(app, 'POST', `/v1/sessions/${open}/commit`)).state, 'committed');
      });
    });
  });

  describe(`HTTP API v1 unavailable (kv: ${kv})`, { skip: skipUnlessFound(kvNeeds(kv)) }, () => {
    let service: TestService;

    before(async () => {
      service = await startTestService({ kv, maxOpenSessions: 1 });
    });
    after(async () => {
      await service?.dispose();
    });

    it('503 unavailable with Retry-After: too many open sessions; nothing begun', async () => {
      const first = freshKey('first-open');
      assertOk(await call(service.app, 'POST', '/v1/sessions', { body: { key: first } }), 201);
      const second = freshKey('one-too-many');
      const refused = await call(service.app, 'POST', '/v1/sessions', { body: { key: second } });
      assertProblem(refused, 503, 'unavailable');
      assert.match(String(refused.headers['retry-after']), /^[1-9]\d*$/);
      assertProblem(await call(service.app, 'GET', `/v1/sessions/${second}`), 404, 'not_found');
      // Room again once the first session is gone.
      assertOk(await call(service.app, 'POST', `/v1/sessions/${first}/cancel`));
      assertOk(await call(service.app, 'POST', '/v1/sessions', { body: { key: second } }), 201);
      assertOk(await call(service.app, 'POST', `/v1/sessions/${second}/cancel`));
    });
  });

  describe(`HTTP API v1 auth (kv: ${kv})`, { skip: skipUnlessFound(kvNeeds(kv)) }, () => {
    const token = 'test-token-0123456789';
    let service: TestService;
    let app: FastifyInstance;

    before(async () => {
      service = await startTestService({ kv, token });
      app = service.app;
    });
    after(async () => {
      await service?.dispose();
    });

    it('serves /healthz and /readyz without a token (probes carry none)', async () => {
      assert.deepEqual(assertOk(await call(app, 'GET', '/healthz')), { status: 'ok' });
      const ready = assertOk(await call(app, 'GET', '/readyz')) as { status: string; stores: { name: string; status: string }[] };
      assert.equal(ready.status, 'ok');
      assert.ok(ready.stores.length > 0 && ready.stores.every((store) => store.status === 'up'), JSON.stringify(ready));
    });

    it('answers 401 unauthorized without the token, or with a wrong one, on every other route', async () => {
      const key = freshKey('auth');
      const requests: [Method, string, Call?][] = [
        ['POST', '/v1/sessions', { body: { key } }],
        ['POST', `/v1/sessions/${key}/changes`, { body: { store: 'main', changes: [] } }],
        ['POST', `/v1/sessions/${key}/commit`],
        ['POST', `/v1/sessions/${key}/cancel`],
        ['GET', `/v1/sessions/${key}`],
        ['GET', '/v1/sessions'],
        ['POST', `/v1/sessions/${key}/resolve`, { body: { action: 'abandon' } }],
        ['POST', '/v1/commits', { body: { key, changes: { main: [] } } }],
        ['GET', '/v1/stores'],
        ['POST', '/v1/stores', { body: { name: 'sneaky', type: 'sqlite', options: { path: join(service.dir, 'sneaky.db') } } }],
        ['DELETE', '/v1/stores/main'],
        ['GET', '/metrics'],
        ['GET', '/docs'],
        ['GET', '/docs/json'],
        ['GET', '/no/such/route'],
      ];
      for (const [method, url, request] of requests) {
        for (const credentials of [{}, { token: 'wrong-token' }, { headers: { authorization: `Basic ${Buffer.from(`x:${token}`).toString('base64')}` } }]) {
          const response = await call(app, method, url, { ...request, ...credentials });
          assertProblem(response, 401, 'unauthorized');
          assert.match(String(response.headers['www-authenticate']), /^Bearer/);
        }
      }
      // Nothing happened behind the 401s.
      assertProblem(await call(app, 'GET', `/v1/sessions/${key}`, { token }), 404, 'not_found');
      const stores = body(await call(app, 'GET', '/v1/stores', { token })).stores as { name: string }[];
      assert.deepEqual(stores.map((store) => store.name).sort(), ['audit', 'main']);
    });

    it('serves every route with the token (the scheme is case-insensitive)', async () => {
      const key = freshKey('authed');
      // A session that changes nothing is refused (DESIGN "The boundary" 6): a change to the worker's own table.
      assertOk(await call(app, 'POST', '/v1/commits', { token, body: { key, changes: { main: [{ sql: 'CREATE TABLE IF NOT EXISTS authed (x INTEGER)' }] } } }));
      assertOk(await call(app, 'GET', `/v1/sessions/${key}`, { headers: { authorization: `bearer ${token}` } }));
      assertOk(await call(app, 'GET', '/readyz', { token }));
      assert.equal((await call(app, 'GET', '/metrics', { token })).statusCode, 200);
      assert.equal((await call(app, 'GET', '/docs/json', { token })).statusCode, 200);
    });
  });
}

describe('HTTP API v1: serving without a token', () => {
  it('knows loopback addresses', () => {
    for (const host of ['127.0.0.1', '127.1.2.3', '::1', '[::1]', 'localhost', 'LOCALHOST', '::ffff:127.0.0.1']) assert.ok(isLoopbackHost(host), host);
    for (const host of ['0.0.0.0', '::', '10.0.0.1', '192.168.1.1', 'example.com', '', '::ffff:10.0.0.1', '128.0.0.1']) assert.ok(!isLoopbackHost(host), host);
  });

  const kv: KvBackend = 'sqlite';
  it('refuses to build on a non-loopback host without a token', async () => {
    const dir = makeTempDir('http-host');
    try {
      await assert.rejects(startTestService({ kv, dir, host: '0.0.0.0' }), /without a token/);
    } finally {
      await removeTempDir(dir);
    }
  });

  it('builds on a non-loopback host with a token', async () => {
    const service = await startTestService({ kv, host: '0.0.0.0', token: 'secret' });
    try {
      assertProblem(await call(service.app, 'GET', '/v1/stores'), 401, 'unauthorized');
    } finally {
      await service.dispose();
    }
  });
});

/** Mapping rows the real coordinator cannot be made to produce on demand. */
describe('HTTP API v1: error → problem mapping', () => {
  it('maps both unavailable errors to 503 with Retry-After (1 s unless the error says otherwise)', () => {
    const kvDown = problemFor(new UnavailableError('etcd unreachable'));
    assert.equal(kvDown?.problem.status, 503);
    assert.equal(kvDown?.problem.code, 'unavailable');
    assert.equal(kvDown?.headers['retry-after'], '1');
    assert.equal(problemFor(new ServiceUnavailableError('busy', 7))?.headers['retry-after'], '7');
    assert.equal(problemFor(new ServiceUnavailableError('busy', 0.2))?.headers['retry-after'], '1');
  });

  it('maps core errors that may surface through the coordinator', () => {
    assert.equal(problemFor(new IdempotencyKeyMismatchError('a', 'b'))?.problem.code, 'key_reused');
    assert.equal(problemFor(new IdempotencyKeyMismatchError('a', 'b'))?.problem.status, 422);
    assert.equal(problemFor(new NotCanonicalizableError('NaN'))?.problem.status, 400);
    const rejected = problemFor(new ChangeRejectedError('UNIQUE constraint failed', { code: 'SQLITE_CONSTRAINT_UNIQUE', change: 1 }));
    assert.equal(rejected?.problem.status, 409);
    assert.equal(rejected?.problem.code, 'store_conflict');
    assert.equal(rejected?.problem.storeCode, 'SQLITE_CONSTRAINT_UNIQUE', 'a store detail never overwrites a problem member');
    assert.equal(rejected?.problem.change, 1);
  });

  it('keeps the store and its detail fields as extension members of a store conflict', () => {
    const conflict = problemFor(new StoreConflictError('orders', 'duplicate key', { sqlstate: '23505', detail: 'Key (id)=(1) exists' }));
    assert.equal(conflict?.problem.store, 'orders');
    assert.equal(conflict?.problem.sqlstate, '23505');
    assert.equal(conflict?.problem.storeDetail, 'Key (id)=(1) exists');
    assert.match(String(conflict?.problem.detail), /duplicate key/);
  });

  it('leaves anything unexpected to the 500 path', () => {
    assert.equal(problemFor(new TypeError('undefined is not a function')), undefined);
    assert.equal(problemFor('a string'), undefined);
  });
});

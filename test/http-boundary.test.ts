/**
 * DESIGN.md "The boundary", points 5 and 6, at the HTTP layer: every error is
 * problem+json (fastify's and Node's own included), messages say what is wrong, and a
 * session that changes nothing is refused without using up its key. Runs over the sqlite
 * KV only: none of this depends on the KV. Node's own refusals go over a real socket.
 */
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { FastifyInstance, InjectOptions, LightMyRequestResponse } from 'fastify';
import { DEFAULT_BODY_LIMIT } from '../src/http/app.ts';
import { sqliteRows, sqliteRun } from './support/rows.ts';
import { startTestService, type TestService } from './support/service.ts';

const PROBLEM_JSON = /^application\/problem\+json/;

/** Asserts an RFC 9457 problem with the contract's members, and returns it. */
function assertProblem(response: LightMyRequestResponse, status: number, code: string): Record<string, unknown> {
  assert.equal(response.statusCode, status, `expected ${status} ${code}, got ${response.statusCode}: ${response.body}`);
  assert.match(String(response.headers['content-type']), PROBLEM_JSON);
  return assertProblemBody(response.body, status, code);
}

function assertProblemBody(text: string, status: number, code: string): Record<string, unknown> {
  const problem = JSON.parse(text) as Record<string, unknown>;
  assert.equal(problem.code, code, text);
  assert.equal(problem.status, status, text);
  assert.equal(problem.type, `https://commitd.dev/problems/${code}`);
  assert.equal(typeof problem.title, 'string');
  assert.equal(typeof problem.detail, 'string');
  return problem;
}

const insert = (name: string) => ({ sql: 'INSERT INTO items (name) VALUES (?)', params: [name] });

let unique = 0;
const freshKey = (label: string) => `${label}-${process.pid}-${++unique}`;

/** Sends `request` as written on a fresh connection; resolves with all the server wrote. */
function rawExchange(port: number, request: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port });
    const chunks: Buffer[] = [];
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.on('error', reject);
    socket.on('close', () => resolve(Buffer.concat(chunks).toString('utf8')));
    socket.setTimeout(10_000, () => socket.destroy(new Error('no answer within 10 s')));
    socket.end(request);
  });
}

/** Splits a raw HTTP/1.1 answer into status, lower-cased headers and body. */
function parseRaw(text: string): { status: number; headers: Record<string, string>; body: string } {
  const split = text.indexOf('\r\n\r\n');
  assert.ok(split > 0, `an HTTP answer, got ${JSON.stringify(text)}`);
  const [statusLine = '', ...lines] = text.slice(0, split).split('\r\n');
  const headers: Record<string, string> = {};
  for (const line of lines) {
    const colon = line.indexOf(':');
    headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
  }
  return { status: Number(statusLine.split(' ')[1]), headers, body: text.slice(split + 4) };
}

describe('the boundary at the HTTP layer (DESIGN points 5 and 6)', () => {
  let service: TestService;
  let app: FastifyInstance;
  let port: number;

  const inject = (options: InjectOptions) => app.inject(options);
  const json = (method: 'POST' | 'DELETE' | 'GET', url: string, body?: unknown) =>
    inject({ method, url, ...(body === undefined ? {} : { headers: { 'content-type': 'application/json' }, payload: JSON.stringify(body) }) });

  before(async () => {
    service = await startTestService({ kv: 'sqlite' });
    app = service.app;
    for (const store of ['main', 'audit'])
      sqliteRun(join(service.dir, `${store}.db`), 'CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL)');
    await app.listen({ host: '127.0.0.1', port: 0 });
    const address = app.server.address();
    assert.ok(address !== null && typeof address === 'object');
    port = address.port;
  });
  after(async () => {
    await service?.dispose();
  });

  describe('every error is problem+json', () => {
    it('a path key of 1,100 characters: 400 invalid_request naming the limit (not fastify’s 414)', async () => {
      const problem = assertProblem(await json('POST', `/v1/sessions/${'k'.repeat(1100)}/commit`), 400, 'invalid_request');
      assert.match(String(problem.detail), /1–200 characters/);
    });

    it('bad percent-encoding in the path: 400 invalid_request', async () => {
      const problem = assertProblem(await json('POST', '/v1/sessions/%ZZ/commit'), 400, 'invalid_request');
      assert.match(String(problem.detail), /not valid percent-encoding/);
    });

    it('headers over Node’s limit (a 20 KB header): a problem, and the connection closes', async () => {
      const answer = parseRaw(await rawExchange(port, `GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20 * 1024)}\r\n\r\n`));
      assert.equal(answer.status, 400);
      assert.match(answer.headers['content-type'] ?? '', PROBLEM_JSON);
      assert.equal(answer.headers.connection, 'close');
      const problem = assertProblemBody(answer.body, 400, 'invalid_request');
      assert.match(String(problem.detail), /exceed the limit of \d+ bytes/);
    });

    it('a garbage request line: a problem, not {"message":"Client Error"}', async () => {
      const answer = parseRaw(await rawExchange(port, 'THIS IS NOT HTTP\r\n\r\n'));
      assert.equal(answer.status, 400);
      assert.match(answer.headers['content-type'] ?? '', PROBLEM_JSON);
      assert.equal(answer.headers.connection, 'close');
      assertProblemBody(answer.body, 400, 'invalid_request');
    });

    it('a JSON object sent as text/plain: 415 unsupported_media_type, saying to send application/json', async () => {
      const response = await inject({
        method: 'POST',
        url: '/v1/commits',
        headers: { 'content-type': 'text/plain' },
        payload: JSON.stringify({ key: freshKey('plain'), changes: { main: [insert('plain')] } }),
      });
      const problem = assertProblem(response, 415, 'unsupported_media_type');
      assert.match(String(problem.detail), /text\/plain.*application\/json/);
    });

    it('a wrong method on an existing path: 405 method_not_allowed with Allow', async () => {
      const commits = await inject({ method: 'DELETE', url: '/v1/commits' });
      assertProblem(commits, 405, 'method_not_allowed');
      assert.equal(commits.headers.allow, 'POST');

      const commit = await inject({ method: 'GET', url: '/v1/sessions/k/commit' });
      assertProblem(commit, 405, 'method_not_allowed');
      assert.equal(commit.headers.allow, 'POST');

      const session = await inject({ method: 'DELETE', url: '/v1/sessions/k' });
      assertProblem(session, 405, 'method_not_allowed');
      assert.deepEqual(String(session.headers.allow).split(', ').sort(), ['GET', 'HEAD']);

      // A path no route has stays 404.
      assertProblem(await inject({ method: 'GET', url: '/v1/nothing-here' }), 404, 'not_found');
    });
  });

  describe('messages say what is wrong', () => {
    it('valid JSON with a __proto__ member: 400 naming it, not "not valid JSON"', async () => {
      const response = await inject({
        method: 'POST',
        url: '/v1/commits',
        headers: { 'content-type': 'application/json' },
        payload: `{"key":"${freshKey('proto')}","changes":{"main":[]},"__proto__":{"x":1}}`,
      });
      const problem = assertProblem(response, 400, 'invalid_request');
      assert.equal(problem.detail, 'the body has a member named __proto__, which commitd refuses');
    });

    it('invalid JSON still says so', async () => {
      const response = await inject({ method: 'POST', url: '/v1/commits', headers: { 'content-type': 'application/json' }, payload: '{"key":' });
      const problem = assertProblem(response, 400, 'invalid_request');
      assert.match(String(problem.detail), /^the body is not valid JSON/);
    });

    it('removing an unknown store: 404 saying there is no store of that name', async () => {
      const problem = assertProblem(await inject({ method: 'DELETE', url: '/v1/stores/nosuch' }), 404, 'not_found');
      assert.equal(problem.detail, 'there is no store named "nosuch"');
    });

    it('a body over the limit: 413 stating the limit in bytes', async () => {
      const response = await inject({
        method: 'POST',
        url: '/v1/commits',
        headers: { 'content-type': 'application/json' },
        payload: JSON.stringify({ key: freshKey('big'), changes: { main: [insert('x'.repeat(DEFAULT_BODY_LIMIT))] } }),
      });
      const problem = assertProblem(response, 413, 'payload_too_large');
      assert.match(String(problem.detail), new RegExp(`limit of ${DEFAULT_BODY_LIMIT} bytes`));
    });
  });

  describe('a session that changes nothing is refused', () => {
    it('a one-shot whose every change list is empty: 400, and the key is not used up', async () => {
      const key = freshKey('empty-once');
      const empty = assertProblem(await json('POST', '/v1/commits', { key, changes: { main: [], audit: [] } }), 400, 'invalid_request');
      assert.match(String(empty.detail), /every change list is empty/);
      const none = assertProblem(await json('POST', '/v1/commits', { key, changes: {} }), 400, 'invalid_request');
      assert.match(String(none.detail), /every change list is empty/);
      assert.equal((await json('GET', `/v1/sessions/${key}`)).statusCode, 404);

      const committed = await json('POST', '/v1/commits', { key, changes: { main: [insert(key)] } });
      assert.equal(committed.statusCode, 200, committed.body);
      const names = sqliteRows<{ name: string }>(join(service.dir, 'main.db'), 'SELECT name FROM items WHERE name = ?', key);
      assert.equal(names.length, 1);
    });

    it('committing an interactive session without a change: 400, and the session stays open for changes', async () => {
      const key = freshKey('empty-interactive');
      assert.equal((await json('POST', '/v1/sessions', { key })).statusCode, 201);
      assert.equal((await json('POST', `/v1/sessions/${key}/changes`, { store: 'main', changes: [] })).statusCode, 200);
      const refused = assertProblem(await json('POST', `/v1/sessions/${key}/commit`), 400, 'invalid_request');
      assert.match(String(refused.detail), /no change to commit/);

      const state = await json('GET', `/v1/sessions/${key}`);
      assert.equal((state.json() as { state: string }).state, 'active');
      assert.equal((await json('POST', `/v1/sessions/${key}/changes`, { store: 'main', changes: [insert(key)] })).statusCode, 200);
      const committed = await json('POST', `/v1/sessions/${key}/commit`);
      assert.equal(committed.statusCode, 200, committed.body);
      assert.equal((committed.json() as { state: string }).state, 'committed');
    });
  });
});

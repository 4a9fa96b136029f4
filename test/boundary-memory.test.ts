/**
 * DESIGN.md "The boundary", point 3: the bytes held by all open sessions' change logs have
 * a global cap (`openLogBytes`) besides the per-session cap; past it `503` + `Retry-After`,
 * nothing applied, and every way a session ends gives its bytes back. Runs over the sqlite
 * KV only: none of this depends on the KV.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { LightMyRequestResponse } from 'fastify';
import { ConfigError, loadConfig } from '../src/config.ts';
import { sqliteRows, sqliteRun } from './support/rows.ts';
import { startTestService, type TestService } from './support/service.ts';

/** The cap under test: two of the changes below fit, a third does not. */
const CAP = 100_000;
const PAD = 'x'.repeat(40_000);

/** A change of about 40 kB of canonical JSON. */
const bigInsert = (name: string) => ({ sql: 'INSERT INTO items (name, pad) VALUES (?, ?)', params: [name, PAD] });

let unique = 0;
const freshKey = (label: string) => `${label}-${process.pid}-${++unique}`;

function assertUnavailable(response: LightMyRequestResponse): string {
  assert.equal(response.statusCode, 503, response.body);
  assert.match(String(response.headers['content-type']), /^application\/problem\+json/);
  assert.match(String(response.headers['retry-after']), /^[1-9]\d*$/);
  const problem = JSON.parse(response.body) as { code: string; detail: string };
  assert.equal(problem.code, 'unavailable');
  assert.match(problem.detail, new RegExp(`limit of ${CAP} bytes`));
  return problem.detail;
}

async function startCapped(idleTimeoutMs = 60_000): Promise<TestService> {
  const service = await startTestService({ kv: 'sqlite', openLogBytes: CAP, idleTimeoutMs });
  sqliteRun(join(service.dir, 'main.db'), 'CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, pad TEXT)');
  return service;
}

/** The `commitd_open_log_bytes` gauge as `/metrics` serves it. */
async function heldBytes(service: TestService): Promise<number> {
  const metrics = await service.app.inject({ method: 'GET', url: '/metrics' });
  const line = metrics.body.split('\n').find((l) => l.startsWith('commitd_open_log_bytes '));
  assert.ok(line, 'commitd_open_log_bytes is exported');
  return Number(line.split(' ')[1]);
}

describe('memory is bounded (DESIGN "The boundary" 3)', () => {
  let service: TestService;
  const json = (method: 'POST' | 'GET', url: string, body?: unknown) =>
    service.app.inject({ method, url, ...(body === undefined ? {} : { headers: { 'content-type': 'application/json' }, payload: JSON.stringify(body) }) });
  const names = (key: string) => sqliteRows<{ name: string }>(join(service.dir, 'main.db'), 'SELECT name FROM items WHERE name = ?', key).length;

  async function openWithChange(key: string): Promise<void> {
    assert.equal((await json('POST', '/v1/sessions', { key, stores: ['main'] })).statusCode, 201);
    const applied = await json('POST', `/v1/sessions/${key}/changes`, { store: 'main', changes: [bigInsert(key)] });
    assert.equal(applied.statusCode, 200, applied.body);
  }

  before(async () => {
    service = await startCapped();
  });
  after(async () => {
    await service?.dispose();
  });

  it('a change over the cap: 503 with Retry-After, nothing applied, the session stays open; it goes through once another session commits', async () => {
    const [a, b, c] = [freshKey('a'), freshKey('b'), freshKey('c')];
    await openWithChange(a);
    await openWithChange(b);
    assert.ok((await heldBytes(service)) > 80_000);
    assert.equal((await json('POST', '/v1/sessions', { key: c, stores: ['main'] })).statusCode, 201);
    assertUnavailable(await json('POST', `/v1/sessions/${c}/changes`, { store: 'main', changes: [bigInsert(c)] }));

    // Nothing of it applied: the session is open without a change, and the earlier ones still commit.
    assert.equal((JSON.parse((await json('GET', `/v1/sessions/${c}`)).body) as { state: string }).state, 'active');
    assert.equal((await json('POST', `/v1/sessions/${c}/commit`)).statusCode, 400);
    assert.equal((await json('POST', `/v1/sessions/${a}/commit`)).statusCode, 200);

    const retried = await json('POST', `/v1/sessions/${c}/changes`, { store: 'main', changes: [bigInsert(c)] });
    assert.equal(retried.statusCode, 200, retried.body);
    assert.equal((await json('POST', `/v1/sessions/${b}/commit`)).statusCode, 200);
    assert.equal((await json('POST', `/v1/sessions/${c}/commit`)).statusCode, 200);
    assert.deepEqual([names(a), names(b), names(c)], [1, 1, 1]);
    assert.equal(await heldBytes(service), 0);
    assert.equal(service.coordinator.openLogBytes, 0);
  });

  it('a cancelled session gives its bytes back', async () => {
    const [a, b, c] = [freshKey('a'), freshKey('b'), freshKey('c')];
    await openWithChange(a);
    await openWithChange(b);
    assert.equal((await json('POST', '/v1/sessions', { key: c, stores: ['main'] })).statusCode, 201);
    assertUnavailable(await json('POST', `/v1/sessions/${c}/changes`, { store: 'main', changes: [bigInsert(c)] }));
    assert.equal((await json('POST', `/v1/sessions/${a}/cancel`)).statusCode, 200);
    assert.equal((await json('POST', `/v1/sessions/${c}/changes`, { store: 'main', changes: [bigInsert(c)] })).statusCode, 200);
    assert.equal((await json('POST', `/v1/sessions/${b}/cancel`)).statusCode, 200);
    assert.equal((await json('POST', `/v1/sessions/${c}/cancel`)).statusCode, 200);
    assert.deepEqual([names(a), names(b), names(c)], [0, 0, 0]);
    assert.equal(await heldBytes(service), 0);
  });

  it('a one-shot over the cap: 503, and its key is still free afterwards', async () => {
    const [a, b, once] = [freshKey('a'), freshKey('b'), freshKey('once')];
    await openWithChange(a);
    await openWithChange(b);
    const body = { key: once, changes: { main: [bigInsert(once)] } };
    assertUnavailable(await json('POST', '/v1/commits', body));
    assert.equal((await json('GET', `/v1/sessions/${once}`)).statusCode, 404);
    assert.equal(names(once), 0);

    assert.equal((await json('POST', `/v1/sessions/${a}/commit`)).statusCode, 200);
    const committed = await json('POST', '/v1/commits', body);
    assert.equal(committed.statusCode, 200, committed.body);
    assert.equal(names(once), 1);
    assert.equal((await json('POST', `/v1/sessions/${b}/commit`)).statusCode, 200);
    assert.equal(await heldBytes(service), 0);
  });
});

describe('an expired session gives its bytes back', () => {
  let service: TestService;
  before(async () => {
    service = await startCapped(200);
  });
  after(async () => {
    await service?.dispose();
  });

  it('the idle timeout releases what the session held', async () => {
    const key = freshKey('idle');
    const json = (url: string, body: unknown) =>
      service.app.inject({ method: 'POST', url, headers: { 'content-type': 'application/json' }, payload: JSON.stringify(body) });
    assert.equal((await json('/v1/sessions', { key, stores: ['main'] })).statusCode, 201);
    assert.equal((await json(`/v1/sessions/${key}/changes`, { store: 'main', changes: [bigInsert(key)] })).statusCode, 200);
    assert.ok((await heldBytes(service)) > 40_000);
    const deadline = Date.now() + 10_000;
    while (service.coordinator.openSessions > 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50));
    assert.equal(service.coordinator.openSessions, 0, 'the session expired');
    assert.equal(await heldBytes(service), 0);
  });
});

describe('openLogBytes in the config file', () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'commitd-memory-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  const withFile = (contents: unknown): NodeJS.ProcessEnv => {
    const path = join(dir, 'commitd.json');
    writeFileSync(path, JSON.stringify(contents));
    return { COMMITD_CONFIG: path };
  };

  it('defaults to 256 MiB and takes a positive integer', () => {
    assert.equal(loadConfig({}).openLogBytes, 268_435_456);
    assert.equal(loadConfig(withFile({ openLogBytes: 1_048_576 })).openLogBytes, 1_048_576);
  });

  it('refuses anything else, naming the field', () => {
    const env = withFile({});
    const name = env.COMMITD_CONFIG;
    for (const [value, problem] of [
      [0, 'must be >= 1'],
      [-5, 'must be >= 1'],
      [1.5, 'must be integer'],
      ['256MiB', 'must be integer'],
    ] as const) {
      assert.throws(
        () => loadConfig(withFile({ openLogBytes: value })),
        (err: unknown) => err instanceof ConfigError && err.message === `config file ${name}: openLogBytes: ${problem}`,
      );
    }
  });
});

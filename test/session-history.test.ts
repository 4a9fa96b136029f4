/**
 * Session history and audit (DESIGN.md "HTTP API v1"): who retried or abandoned a failed
 * session and when, kept for the retention period; `GET /v1/sessions?state=` for every
 * state, committed and abandoned included, newest first, a page at a time; and the
 * `Idempotent-Replayed` header on answers served again. A real service on both KV
 * backends, through `app.inject()`.
 */
import assert from 'node:assert/strict';
import { createHash, randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { FastifyInstance, InjectOptions, LightMyRequestResponse } from 'fastify';
import { pino } from 'pino';
import { parseTokenEntries } from '../src/http/tokens.ts';
import { skipUnlessFound } from './harness/require.ts';
import { makeFailedSession } from './support/failed-session.ts';
import { sqliteRun } from './support/rows.ts';
import { KV_BACKENDS, kvNeeds, startTestService, type TestService } from './support/service.ts';
import { waitFor } from './support/wait.ts';

const OPS = 'alice-ops-secret-0123456789';
const WORKER = 'worker-secret-0123456789';
const sha256 = (text: string) => createHash('sha256').update(text).digest('hex');
const tokens = parseTokenEntries(
  [
    { name: 'alice-ops', sha256: sha256(OPS), scopes: ['read', 'operate'] },
    { name: 'worker', sha256: sha256(WORKER), scopes: ['commit'] },
  ],
  {},
  'auth.tokens',
);

async function send(app: FastifyInstance, method: 'GET' | 'POST', url: string, secret?: string, body?: unknown): Promise<LightMyRequestResponse> {
  const headers: Record<string, string> = {};
  if (secret !== undefined) headers.authorization = `Bearer ${secret}`;
  const options: InjectOptions = { method, url, headers };
  if (body !== undefined) {
    headers['content-type'] = 'application/json';
    options.payload = JSON.stringify(body);
  }
  return app.inject(options);
}

function ok(response: LightMyRequestResponse, status = 200): Record<string, unknown> {
  assert.equal(response.statusCode, status, response.body);
  return response.json() as Record<string, unknown>;
}

const ISO = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/;

for (const kv of KV_BACKENDS) {
  describe(`session history (kv: ${kv})`, { skip: skipUnlessFound(kvNeeds(kv)) }, () => {
    let service: TestService;
    let app: FastifyInstance;
    const fresh = (prefix: string) => `${prefix}-${randomUUID().slice(0, 8)}`;
    const insert = (table: string, key: string) => ({ sql: `INSERT INTO ${table}(k) VALUES (?)`, params: [key] });

    const logLines: Record<string, unknown>[] = [];
    const logger = pino({ level: 'info' }, { write: (line: string) => logLines.push(JSON.parse(line) as Record<string, unknown>) });

    before(async () => {
      service = await startTestService({ kv, tokens, logger });
      app = service.app;
      sqliteRun(join(service.dir, 'main.db'), 'CREATE TABLE h (k TEXT)');
    });
    after(async () => {
      await service?.dispose();
    });

    it('abandon records who and when: the abandoned listing shows them, the log says so', async () => {
      const key = fresh('abandon');
      await makeFailedSession(service, key);
      const before = Date.now();
      assert.deepEqual(ok(await send(app, 'POST', `/v1/sessions/${key}/resolve`, OPS, { action: 'abandon' })), { key, state: 'abandoned' });
      assert.equal((await send(app, 'GET', `/v1/sessions/${key}`, OPS)).statusCode, 404, 'the session itself is gone');

      const listed = ok(await send(app, 'GET', '/v1/sessions?state=abandoned', OPS)).sessions as Record<string, unknown>[];
      const entry = listed.find((session) => session.key === key);
      assert.ok(entry, `listed: ${JSON.stringify(listed)}`);
      assert.equal(entry.state, 'abandoned');
      assert.equal(entry.abandonedBy, 'alice-ops');
      assert.match(String(entry.abandonedAt), ISO);
      assert.ok(Date.parse(String(entry.abandonedAt)) >= before - 1000);
      assert.deepEqual(entry.stores, ['main']);
      assert.match(String(entry.error), /UNIQUE|constraint/i, 'why it had failed is kept');
      assert.match(String(entry.sessionId), /^[0-9a-f]{32}$/);
      const logged = logLines.find((line) => line.key === key && line.msg === 'failed session abandoned by an operator');
      assert.ok(logged, 'the abandon is logged');
      assert.equal(logged.by, 'alice-ops');
      assert.equal(logged.level, 40, 'at warn');

      // The key is free again; its abandonment stays listed.
      ok(await send(app, 'POST', '/v1/commits', WORKER, { key, changes: { main: [insert('h', key)] } }));
      const again = ok(await send(app, 'GET', '/v1/sessions?state=abandoned', OPS)).sessions as Record<string, unknown>[];
      assert.ok(again.some((session) => session.key === key));
    });

    it('retry records who and when: GET shows the retries, failed again and then committed', async () => {
      const key = fresh('retry');
      await makeFailedSession(service, key);
      const conflict = await send(app, 'POST', `/v1/sessions/${key}/resolve`, OPS, { action: 'retry' });
      assert.equal(conflict.statusCode, 409, 'the conflicting row is still there');
      const failed = ok(await send(app, 'GET', `/v1/sessions/${key}`, OPS));
      assert.equal(failed.state, 'failed');
      const audit = failed.audit as Record<string, unknown>[];
      assert.equal(audit.length, 1);
      assert.equal(audit[0]?.action, 'retry');
      assert.equal(audit[0]?.by, 'alice-ops');
      assert.match(String(audit[0]?.at), ISO);

      // The other writer's row goes: the next retry commits, and both retries stay on record.
      sqliteRun(join(service.dir, 'main.db'), `DELETE FROM taken_${key.replace(/-/g, '_')}`);
      ok(await send(app, 'POST', `/v1/sessions/${key}/resolve`, OPS, { action: 'retry' }));
      const committed = ok(await send(app, 'GET', `/v1/sessions/${key}`, OPS));
      assert.equal(committed.state, 'committed');
      assert.deepEqual(
        (committed.audit as Record<string, unknown>[]).map((entry) => [entry.action, entry.by]),
        [
          ['retry', 'alice-ops'],
          ['retry', 'alice-ops'],
        ],
      );
      const logged = logLines.filter((line) => line.key === key && line.msg === 'failed session retried by an operator');
      assert.deepEqual(
        logged.map((line) => line.by),
        ['alice-ops', 'alice-ops'],
      );
    });

    it('a session nobody acted on has no audit member', async () => {
      const key = fresh('plain');
      ok(await send(app, 'POST', '/v1/commits', WORKER, { key, changes: { main: [insert('h', key)] } }));
      assert.equal(ok(await send(app, 'GET', `/v1/sessions/${key}`, OPS)).audit, undefined);
    });

    it('marks replays with Idempotent-Replayed: true, and first answers not at all', async () => {
      const once = fresh('replay-once');
      const body = { key: once, changes: { main: [insert('h', once)] } };
      const first = await send(app, 'POST', '/v1/commits', WORKER, body);
      assert.equal(first.statusCode, 200, first.body);
      assert.equal(first.headers['idempotent-replayed'], undefined);
      const retried = await send(app, 'POST', '/v1/commits', WORKER, body);
      assert.equal(retried.statusCode, 200);
      assert.equal(retried.headers['idempotent-replayed'], 'true');
      assert.deepEqual(retried.json(), first.json(), 'the same answer, marked');
      assert.equal(retried.json().replayed, undefined, 'the marker is a header, not a member');

      const key = fresh('replay-session');
      const begun = await send(app, 'POST', '/v1/sessions', WORKER, { key, stores: ['main'] });
      assert.equal(begun.statusCode, 201);
      assert.equal(begun.headers['idempotent-replayed'], undefined);
      ok(await send(app, 'POST', `/v1/sessions/${key}/changes`, WORKER, { store: 'main', changes: [insert('h', key)] }));
      const committed = await send(app, 'POST', `/v1/sessions/${key}/commit`, WORKER);
      assert.equal(committed.statusCode, 200, committed.body);
      assert.equal(committed.headers['idempotent-replayed'], undefined);
      const commitAgain = await send(app, 'POST', `/v1/sessions/${key}/commit`, WORKER);
      assert.equal(commitAgain.statusCode, 200);
      assert.equal(commitAgain.headers['idempotent-replayed'], 'true');
      assert.deepEqual(commitAgain.json(), committed.json());
      const beginAgain = await send(app, 'POST', '/v1/sessions', WORKER, { key, stores: ['main'] });
      assert.equal(beginAgain.statusCode, 200);
      assert.equal(beginAgain.json().state, 'committed');
      assert.equal(beginAgain.headers['idempotent-replayed'], 'true');

      assert.equal((await send(app, 'GET', `/v1/sessions/${key}`, OPS)).headers['idempotent-replayed'], undefined, 'a read is no replay');
    });

    it('refuses a cursor it did not give, and limits outside 1–1000', async () => {
      for (const query of ['cursor=bm90LWEtY3Vyc29y', 'cursor=not%20base64', 'limit=0', 'limit=1001', 'limit=abc', 'limit=-1', 'state=cancelled']) {
        const response = await send(app, 'GET', `/v1/sessions?${query}`, OPS);
        assert.equal(response.statusCode, 400, `${query}: ${response.body}`);
        assert.equal(response.json().code, 'invalid_request');
      }
    });
  });

  describe(`session listings page by page (kv: ${kv})`, { skip: skipUnlessFound(kvNeeds(kv)) }, () => {
    let service: TestService;

    before(async () => {
      service = await startTestService({ kv });
      sqliteRun(join(service.dir, 'main.db'), 'CREATE TABLE p (k TEXT)');
    });
    after(async () => {
      await service?.dispose();
    });

    /** Every page of a listing, following nextCursor (bounded). */
    async function pages(query: string): Promise<string[][]> {
      const all: string[][] = [];
      let cursor: string | undefined;
      for (let n = 0; n < 50; n++) {
        const body = ok(await send(service.app, 'GET', `/v1/sessions?${query}${cursor ? `&cursor=${cursor}` : ''}`));
        all.push((body.sessions as { key: string }[]).map((session) => session.key));
        cursor = body.nextCursor as string | undefined;
        if (cursor === undefined) return all;
      }
      throw new Error('the listing did not end');
    }

    it('lists committed sessions newest first, two at a time, then ends', async () => {
      const keys = ['c1', 'c2', 'c3', 'c4', 'c5'];
      for (const key of keys)
        ok(await send(service.app, 'POST', '/v1/commits', undefined, { key, changes: { main: [{ sql: 'INSERT INTO p(k) VALUES (?)', params: [key] }] } }));
      assert.deepEqual(await pages('state=committed&limit=2'), [['c5', 'c4'], ['c3', 'c2'], ['c1']]);
      assert.deepEqual(await pages('state=committed'), [['c5', 'c4', 'c3', 'c2', 'c1']]);
      const [newest] = ok(await send(service.app, 'GET', '/v1/sessions?state=committed&limit=1')).sessions as Record<string, unknown>[];
      assert.equal(newest?.state, 'committed');
      assert.match(String(newest?.sessionId), /^[0-9a-f]{32}$/);
      assert.deepEqual(Object.keys(newest?.stores as object), ['main']);
    });

    it('lists open sessions newest first, and each state apart', async () => {
      for (const key of ['o1', 'o2', 'o3']) ok(await send(service.app, 'POST', '/v1/sessions', undefined, { key, stores: ['main'] }), 201);
      assert.deepEqual(await pages('limit=2'), [['o3', 'o2'], ['o1']]);
      assert.deepEqual(await pages('state=active'), [['o3', 'o2', 'o1']]);
      assert.deepEqual(await pages('state=failed'), [[]]);
      await makeFailedSession(service, 'f1');
      assert.deepEqual(await pages('state=failed'), [['f1']]);
      assert.deepEqual(await pages(''), [['f1', 'o3', 'o2', 'o1']]);
      for (const key of ['o1', 'o2', 'o3']) ok(await send(service.app, 'POST', `/v1/sessions/${key}/cancel`));
    });

    it('names the sender of an abandon "anonymous" when commitd serves without tokens', async () => {
      await makeFailedSession(service, 'anon');
      ok(await send(service.app, 'POST', '/v1/sessions/anon/resolve', undefined, { action: 'abandon' }));
      const [entry] = ok(await send(service.app, 'GET', '/v1/sessions?state=abandoned')).sessions as Record<string, unknown>[];
      assert.equal(entry?.key, 'anon');
      assert.equal(entry?.abandonedBy, 'anonymous');
    });
  });

  describe(`audit records expire with the retention period (kv: ${kv})`, { skip: skipUnlessFound(kvNeeds(kv)) }, () => {
    let service: TestService;
    before(async () => {
      service = await startTestService({ kv, retentionSeconds: 2 });
    });
    after(async () => {
      await service?.dispose();
    });

    it('drops the abandoned entry once the retention period has passed', async () => {
      await makeFailedSession(service, 'short-lived');
      ok(await send(service.app, 'POST', '/v1/sessions/short-lived/resolve', undefined, { action: 'abandon' }));
      const listed = async () => (ok(await send(service.app, 'GET', '/v1/sessions?state=abandoned')).sessions as unknown[]).length;
      assert.equal(await listed(), 1);
      await waitFor('the abandoned entry to expire', async () => ((await listed()) === 0 ? true : undefined), { timeoutMs: 20_000, intervalMs: 250 });
    });
  });
}

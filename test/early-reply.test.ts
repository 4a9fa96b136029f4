/**
 * The early reply on a shared etcd: instance A answers a commit once every store committed,
 * before its result write lands. A retry that reaches instance B in that window finds A's
 * `committing` record: B waits for it to settle and answers with A's result, not with
 * `409 session_busy`. A's result write is held back by the `commit.afterAnswer` failpoint,
 * so the window is wide enough to hit on any machine.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { recordKeys } from '../src/coordinator/records.ts';
import { sessionIdOfChanges } from '../src/core/session-id.ts';
import { makeTempDir, removeTempDir } from './harness/child.ts';
import { skipUnlessFound } from './harness/require.ts';
import { countRows, sqliteRun } from './support/rows.ts';
import { kvNeeds, sqliteStores, startTestService, type TestService } from './support/service.ts';

type Reply = { status: number; body: Record<string, unknown> };

async function call(service: TestService, method: 'GET' | 'POST', url: string, payload?: unknown): Promise<Reply> {
  const response = await service.app.inject({
    method,
    url,
    ...(payload === undefined ? {} : { headers: { 'content-type': 'application/json' }, payload: JSON.stringify(payload) }),
  });
  return { status: response.statusCode, body: response.body === '' ? {} : (JSON.parse(response.body) as Record<string, unknown>) };
}

/** How long A holds its result write back after answering. */
const HELD_MS = 3000;

describe('the early reply across instances (etcd)', { skip: skipUnlessFound(kvNeeds('etcd')) }, () => {
  const root = makeTempDir('early-reply');
  const stores = sqliteStores(root, ['s1', 's2']);
  const pathOf = (name: string) => join(root, `${name}.db`);
  const namespace = `/t-${randomUUID()}/`;
  let a: TestService;
  let b: TestService;
  let busy: TestService;

  before(async () => {
    for (const name of ['s1', 's2']) sqliteRun(pathOf(name), 'CREATE TABLE IF NOT EXISTS t(k TEXT, n INTEGER)');
    const shared = { kv: 'etcd' as const, namespace, stores };
    a = await startTestService({ ...shared, dir: join(root, 'a'), instanceId: 'inst-a', failpoints: `commit.afterAnswer=delay(${HELD_MS})` });
    b = await startTestService({ ...shared, dir: join(root, 'b'), instanceId: 'inst-b', settleWaitMs: 4 * HELD_MS });
    // An instance that does not wait: what B would answer without the settle wait.
    busy = await startTestService({ ...shared, dir: join(root, 'c'), instanceId: 'inst-c', settleWaitMs: 0 });
  });
  after(async () => {
    for (const service of [a, b, busy]) await service?.close();
    await removeTempDir(root);
  });

  it('A answers before its result lands; a retry on B meanwhile gets the same answer', async () => {
    const key = `early-${randomUUID()}`;
    const changes = {
      s1: [{ sql: 'INSERT INTO t(k, n) VALUES (?, ?)', params: [key, 1] }],
      s2: [{ sql: 'INSERT INTO t(k, n) VALUES (?, ?)', params: [key, 2] }],
    };
    const answered = await call(a, 'POST', '/v1/commits', { key, changes });
    assert.equal(answered.status, 200, JSON.stringify(answered.body));
    assert.equal(answered.body.sessionId, sessionIdOfChanges(changes));

    // The answer left before the result write: the KV still holds the `committing` record.
    const record = await a.kv.get(recordKeys.session(key));
    assert.ok(record, 'the session record is still there when A has answered');
    assert.equal(JSON.parse(record.value).state, 'committing');
    assert.equal(await a.kv.get(recordKeys.result(key)), undefined, 'no result yet');

    const withoutWait = await call(busy, 'POST', '/v1/commits', { key, changes });
    assert.equal(withoutWait.status, 409, JSON.stringify(withoutWait.body));
    assert.equal(withoutWait.body.code, 'session_busy');

    // The same retry on B, and a commit of the key there, while A's result is held back.
    const [retried, committed] = await Promise.all([call(b, 'POST', '/v1/commits', { key, changes }), call(b, 'POST', `/v1/sessions/${key}/commit`)]);
    for (const reply of [retried, committed]) {
      assert.equal(reply.status, 200, JSON.stringify(reply.body));
      assert.equal(reply.body.state, 'committed');
      assert.equal(reply.body.sessionId, answered.body.sessionId);
      assert.deepEqual(reply.body.stores, answered.body.stores);
    }
    assert.ok(await a.kv.get(recordKeys.result(key)), 'B answered from the result A wrote');
    for (const name of ['s1', 's2']) assert.equal(countRows(pathOf(name), key), 1, `${name} holds the row once`);
  });

  it('other changes under the key on B get key_reused, as on A', async () => {
    const key = `early-other-${randomUUID()}`;
    const changes = { s1: [{ sql: 'INSERT INTO t(k, n) VALUES (?, ?)', params: [key, 1] }] };
    assert.equal((await call(a, 'POST', '/v1/commits', { key, changes })).status, 200);
    const other = await call(b, 'POST', '/v1/commits', { key, changes: { s1: [{ sql: 'INSERT INTO t(k, n) VALUES (?, ?)', params: [key, 9] }] } });
    assert.equal(other.status, 422, JSON.stringify(other.body));
    assert.equal(other.body.code, 'key_reused');
    assert.equal(countRows(pathOf('s1'), key), 1);
  });
});

/**
 * A duplicate of a commit that is still running on this instance waits for it and answers
 * its outcome — commitd's documented choice against the IETF Idempotency-Key draft, which
 * answers 409 to a concurrent duplicate (docs/api.md, "Idempotency"). The first commit is
 * held past its commit point by a failpoint delay; the duplicate is sent only once the
 * session is seen `committing`, so it certainly arrives in flight.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { startTestService, type TestService } from './support/service.ts';
import { waitFor } from './support/wait.ts';

describe('a concurrent duplicate of an in-flight commit', () => {
  let service: TestService;

  before(async () => {
    service = await startTestService({ kv: 'sqlite', failpoints: 'commit.afterIntent=delay(1500)' });
    const setup = await service.app.inject({
      method: 'POST',
      url: '/v1/commits',
      payload: { key: 'dup-setup', changes: { main: [{ sql: 'CREATE TABLE d (x)' }] } },
    });
    assert.equal(setup.statusCode, 200, setup.body);
  });
  after(() => service?.dispose());

  async function committing(key: string): Promise<void> {
    await waitFor(
      `${key} past its commit point`,
      async () => {
        const shown = await service.app.inject({ method: 'GET', url: `/v1/sessions/${key}` });
        return shown.statusCode === 200 && shown.json().state === 'committing' ? true : undefined;
      },
      { timeoutMs: 10_000, intervalMs: 20 },
    );
  }

  it('interactive: the duplicate waits and gets the same 200 answer, not 409', async () => {
    assert.equal((await service.app.inject({ method: 'POST', url: '/v1/sessions', payload: { key: 'dup-i', stores: ['main'] } })).statusCode, 201);
    const applied = await service.app.inject({
      method: 'POST',
      url: '/v1/sessions/dup-i/changes',
      payload: { store: 'main', changes: [{ sql: 'INSERT INTO d VALUES (1)' }] },
    });
    assert.equal(applied.statusCode, 200, applied.body);
    const first = service.app.inject({ method: 'POST', url: '/v1/sessions/dup-i/commit' });
    await committing('dup-i');
    const duplicate = await service.app.inject({ method: 'POST', url: '/v1/sessions/dup-i/commit' });
    const original = await first;
    assert.equal(original.statusCode, 200, original.body);
    assert.equal(duplicate.statusCode, 200, duplicate.body);
    assert.equal(duplicate.json().sessionId, original.json().sessionId);
    assert.equal(duplicate.json().state, 'committed');
    assert.equal(duplicate.headers['idempotent-replayed'], 'true', 'the duplicate is a replay');
    assert.equal(original.headers['idempotent-replayed'], undefined);
  });

  it('one-shot: the duplicate with the same changes waits and gets the same answer', async () => {
    const payload = { key: 'dup-o', changes: { main: [{ sql: 'INSERT INTO d VALUES (2)' }] } };
    const first = service.app.inject({ method: 'POST', url: '/v1/commits', payload });
    await committing('dup-o');
    const duplicate = await service.app.inject({ method: 'POST', url: '/v1/commits', payload });
    const original = await first;
    assert.equal(original.statusCode, 200, original.body);
    assert.equal(duplicate.statusCode, 200, duplicate.body);
    assert.equal(duplicate.json().sessionId, original.json().sessionId);
  });
});

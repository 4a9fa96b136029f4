/**
 * The `http` participant protocol end to end: a real commitd (in process, and as a process
 * that is SIGKILLed) drives a real participant service built on the SDK's barrier, next to
 * a sqlite store. Faults a healthy participant does not produce (a 5xx, a late answer, a
 * refused confirm) are injected in the participant service itself.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { makeTempDir, removeTempDir } from './harness/child.ts';
import { startProcess } from './support/process.ts';
import { countRows, sqliteRun } from './support/rows.ts';
import { startTestService, type TestService } from './support/service.ts';
import { protocolViolations, startStockParticipant, type StockParticipant } from './support/stock-participant.ts';
import { waitFor } from './support/wait.ts';

const insert = (key: string) => ({ sql: 'INSERT INTO t (k) VALUES (?)', params: [key] });
const reserve = (sku: string, qty: number) => ({ action: 'reserve', body: { sku, qty } });

function httpStore(participant: StockParticipant, extra: Record<string, unknown> = {}) {
  return {
    name: 'stock',
    type: 'http',
    options: { baseUrl: participant.url, timeoutMs: 400, retry: { attempts: 2, backoffMs: 20, confirmForMs: 1500 }, ...extra },
  };
}

describe('the http participant protocol', () => {
  const dir = makeTempDir('http-participant');
  let participant: StockParticipant;
  let service: TestService;

  before(async () => {
    participant = await startStockParticipant(dir);
    sqliteRun(join(dir, 'main.db'), 'CREATE TABLE t (k TEXT)');
    sqliteRun(join(dir, 'zlog.db'), 'CREATE TABLE u (k INTEGER PRIMARY KEY)');
    service = await startTestService({
      kv: 'sqlite',
      dir: join(dir, 'commitd'),
      stores: [
        { name: 'main', type: 'sqlite', options: { path: join(dir, 'main.db') } },
        // Prepares after `stock`: a change it refuses at prepare comes after the try was accepted.
        { name: 'zlog', type: 'sqlite', options: { path: join(dir, 'zlog.db') } },
        httpStore(participant),
      ],
    });
  });
  after(async () => {
    await service?.dispose();
    await participant?.close();
    removeTempDir(dir);
  });

  const post = (url: string, payload?: unknown) =>
    service.app.inject({ method: 'POST', url, ...(payload === undefined ? {} : { payload: payload as Record<string, unknown> }) });
  const attemptsOf = (key: string, phase: string) => participant.journal.filter((e) => e.key === key && e.phase === phase);

  it('a try the participant refuses: 409 store_conflict with its problem, nothing committed anywhere, and the key goes through later', async () => {
    const key = 'refused-1';
    const before = participant.available('gadget');
    const refused = await post('/v1/commits', { key, changes: { main: [insert(key)], stock: [reserve('gadget', before + 1)] } });
    assert.equal(refused.statusCode, 409, refused.body);
    const problem = refused.json();
    assert.equal(problem.code, 'store_conflict');
    assert.equal(problem.participant.code, 'out_of_stock');
    assert.match(problem.detail, /not enough gadget/);
    assert.equal(countRows(join(dir, 'main.db'), key), 0);
    assert.equal(participant.confirmed(key), 0);
    assert.equal(participant.available('gadget'), before);
    assert.equal((await service.app.inject({ method: 'GET', url: `/v1/sessions/${key}` })).statusCode, 404);
    // The refused attempt got its cancel (a tombstone: its try left nothing).
    assert.deepEqual(
      participant.attempts(key).map((a) => a.state),
      ['cancelled'],
    );

    const next = await post('/v1/commits', { key, changes: { main: [insert(key)], stock: [reserve('gadget', 1)] } });
    assert.equal(next.statusCode, 200, next.body);
    assert.equal(participant.confirmed(key), 1);
    assert.equal(countRows(join(dir, 'main.db'), key), 1);
    assert.equal(participant.available('gadget'), before - 1);
    assert.deepEqual(protocolViolations(participant.journal, key), []);
  });

  it('a try answered 5xx, or not in time: 503, the session cancelled, the reservation released', async () => {
    for (const [key, fault] of [
      ['unavailable-5xx', { status: 500, times: 2 }],
      ['unavailable-timeout', { delayMs: 700, times: 2 }],
    ] as const) {
      const stock = participant.available('widget');
      participant.fault('try', fault);
      const answer = await post('/v1/commits', { key, changes: { main: [insert(key)], stock: [reserve('widget', 3)] } });
      assert.equal(answer.statusCode, 503, answer.body);
      assert.equal(answer.json().code, 'unavailable');
      assert.ok(answer.headers['retry-after']);
      assert.equal(countRows(join(dir, 'main.db'), key), 0);
      // The late tries (if any) arrive after their cancel and are refused.
      console.log(key, JSON.stringify(participant.received.filter((e) => e.key === key)), answer.body);
      await waitFor('both tries answered', () => (attemptsOf(key, 'try').length === 2 ? true : undefined), { timeoutMs: 10_000 });
      assert.equal(participant.confirmed(key), 0);
      assert.equal(participant.available('widget'), stock);
      assert.ok(attemptsOf(key, 'cancel').length >= 1, 'the session was cancelled at the participant');
      assert.deepEqual(protocolViolations(participant.journal, key), []);
    }
  });

  it('a store that prepares after the try fails: the participant hears cancel for the accepted try', async () => {
    const key = 'cancel-after-try';
    const stock = participant.available('widget');
    const answer = await post('/v1/commits', {
      key,
      changes: { main: [insert(key)], stock: [reserve('widget', 2)], zlog: [{ sql: 'INSERT INTO u (k) VALUES (1), (1)' }] },
    });
    assert.equal(answer.statusCode, 409, answer.body);
    assert.deepEqual(
      participant.journal.filter((e) => e.key === key).map((e) => [e.phase, e.status]),
      [
        ['try', 200],
        ['cancel', 200],
      ],
    );
    assert.equal(participant.available('widget'), stock);
    assert.equal(participant.reserved('widget'), 0);
    assert.deepEqual(
      participant.attempts(key).map((a) => a.state),
      ['cancelled'],
    );
  });

  it('confirm is retried until the participant answers 2xx', async () => {
    const key = 'confirm-retried';
    participant.fault('confirm', { status: 503, times: 2 });
    const answer = await post('/v1/commits', { key, changes: { main: [insert(key)], stock: [reserve('widget', 1)] } });
    assert.equal(answer.statusCode, 200, answer.body);
    assert.deepEqual(
      attemptsOf(key, 'confirm').map((e) => e.status),
      [503, 503, 200],
    );
    assert.equal(participant.confirmed(key), 1);
    assert.equal(participant.reserved('widget'), 0);
    assert.deepEqual(protocolViolations(participant.journal, key), []);
  });

  it('a confirm answered 4xx turns the session failed; an operator retry confirms it', async () => {
    const key = 'confirm-refused';
    participant.fault('confirm', { status: 400, times: 1_000 });
    const answer = await post('/v1/commits', { key, changes: { main: [insert(key)], stock: [reserve('widget', 1)] } });
    assert.equal(answer.statusCode, 503, answer.body);
    const failed = await waitFor('the session to fail', async () => {
      const shown = (await service.app.inject({ method: 'GET', url: `/v1/sessions/${key}` })).json();
      return shown.state === 'failed' ? shown : undefined;
    });
    assert.match(failed.error, /refused the confirm with 400/);
    assert.equal(participant.confirmed(key), 0);
    // The data of the other store is committed (past the commit point); the participant holds its try.
    assert.equal(participant.attempts(key)[0]?.state, 'tried');

    participant.fault('confirm', { status: 400, times: 0 });
    const retried = await post(`/v1/sessions/${key}/resolve`, { action: 'retry' });
    assert.equal(retried.statusCode, 200, retried.body);
    assert.equal(retried.json().state, 'committed');
    assert.equal(participant.confirmed(key), 1);
    assert.equal(countRows(join(dir, 'main.db'), key), 1);
    assert.deepEqual(protocolViolations(participant.journal, key), []);
  });

  it('an interactive session: changes kept until commit, one try with all of them, the result lists the confirmed participant', async () => {
    const key = 'interactive-1';
    assert.equal((await post('/v1/sessions', { key, stores: ['main', 'stock'] })).statusCode, 201);
    assert.equal((await post(`/v1/sessions/${key}/changes`, { store: 'stock', changes: [reserve('widget', 1)] })).statusCode, 200);
    assert.equal((await post(`/v1/sessions/${key}/changes`, { store: 'stock', changes: [reserve('widget', 2)] })).statusCode, 200);
    assert.equal((await post(`/v1/sessions/${key}/changes`, { store: 'main', changes: [insert(key)] })).statusCode, 200);
    assert.equal(participant.received.filter((e) => e.key === key).length, 0, 'nothing reaches the participant before commit');
    const committed = await post(`/v1/sessions/${key}/commit`);
    assert.equal(committed.statusCode, 200, committed.body);
    assert.equal(attemptsOf(key, 'try').length, 1);
    // The answer may leave before the result write (embedded KV): GET waits for it.
    assert.equal((await service.app.inject({ method: 'GET', url: `/v1/sessions/${key}` })).json().state, 'committed');
    const result = await service.kv.get(`results/${key}`);
    assert.deepEqual(JSON.parse(result?.value ?? '{}').confirmed, ['stock']);
    // A worker's explicit cancel before commit sends nothing: no try was sent.
    const idle = 'interactive-cancelled';
    await post('/v1/sessions', { key: idle, stores: ['stock'] });
    await post(`/v1/sessions/${idle}/changes`, { store: 'stock', changes: [reserve('widget', 1)] });
    assert.equal((await post(`/v1/sessions/${idle}/cancel`)).statusCode, 200);
    assert.equal(participant.received.filter((e) => e.key === idle).length, 0);
  });

  it('store options are checked at registration: an http(s) URL that answers, no protocol headers', async () => {
    const register = (options: Record<string, unknown>) => post('/v1/stores', { name: `bad-${Math.random().toString(36).slice(2, 8)}`, type: 'http', options });
    for (const options of [
      { baseUrl: 'file:///etc/passwd' },
      { baseUrl: 'not a url' },
      { baseUrl: 'http://user:secret@127.0.0.1:1/' },
      { baseUrl: participant.url, headers: { 'Idempotency-Key': 'mine' } },
      { baseUrl: participant.url, headers: { 'x-ok': 'a\r\nInjected: 1' } },
      { baseUrl: 'http://127.0.0.1:1', timeoutMs: 300 },
    ]) {
      const answer = await register(options);
      assert.equal(answer.statusCode, 400, `${JSON.stringify(options)}: ${answer.body}`);
    }
    // A credential comes from the environment ({"env"}): written out, the catalog refuses it.
    process.env.COMMITD_TEST_PARTICIPANT_AUTH = 'Bearer t';
    const ok = await register({ baseUrl: `${participant.url}/`, headers: { authorization: { env: 'COMMITD_TEST_PARTICIPANT_AUTH' } } });
    assert.equal(ok.statusCode, 201, ok.body);
  });

  it('a change cannot set the protocol fields: key, attempt and store are commitd’s', async () => {
    const key = 'boundary-1';
    const answer = await post('/v1/commits', {
      key,
      changes: { stock: [{ action: 'note', body: { key: 'other', attempt: 'forged', store: 'x' } }] },
    });
    assert.equal(answer.statusCode, 200, answer.body);
    const calls = participant.journal.filter((e) => e.key === key);
    assert.deepEqual(
      calls.map((e) => e.phase),
      ['try', 'confirm'],
    );
    assert.notEqual(calls[0]?.attempt, 'forged');
    const extra = await post('/v1/commits', { key: 'boundary-2', changes: { stock: [{ action: 'note', attempt: 'forged' }] } });
    assert.equal(extra.statusCode, 400, extra.body);
  });
});

describe('recovery cancels the try of a dead instance', () => {
  const dir = makeTempDir('http-participant-crash');
  let participant: StockParticipant;

  before(async () => {
    participant = await startStockParticipant(dir);
    sqliteRun(join(dir, 'main.db'), 'CREATE TABLE t (k TEXT)');
  });
  after(async () => {
    await participant?.close();
    removeTempDir(dir);
  });

  for (const mode of ['one-shot', 'interactive'] as const) {
    it(`${mode}: commitd SIGKILLed while its try is in flight; the restarted one cancels it, then the key commits`, async () => {
      const key = `dead-${mode}`;
      const stores = [{ name: 'main', type: 'sqlite', options: { path: join(dir, 'main.db') } }, httpStore(participant, { timeoutMs: 5000 })];
      const options = { dir: join(dir, mode), stores, config: { instanceId: `crash-${mode}` } };
      const stock = participant.available('widget');
      participant.fault('try', { delayMs: 1500, times: 1 });
      const doomed = await startProcess(options);
      const changes = { main: [insert(key)], stock: [reserve('widget', 5)] };
      const sent =
        mode === 'one-shot'
          ? doomed.request('POST', '/v1/commits', { key, changes })
          : (async () => {
              await doomed.request('POST', '/v1/sessions', { key, stores: ['main', 'stock'] });
              for (const [store, list] of Object.entries(changes)) await doomed.request('POST', `/v1/sessions/${key}/changes`, { store, changes: list });
              return doomed.request('POST', `/v1/sessions/${key}/commit`);
            })();
      sent.catch(() => undefined);
      await waitFor('the try to reach the participant', () => (participant.received.some((e) => e.key === key && e.phase === 'try') ? true : undefined));
      await doomed.process.kill('SIGKILL');

      const restarted = await startProcess(options);
      try {
        const [attempt] = participant.received.filter((e) => e.key === key && e.phase === 'try').map((e) => e.attempt);
        await waitFor('the dead attempt to be cancelled', () =>
          participant.attempts(key).some((a) => a.attempt === attempt && a.state === 'cancelled') ? true : undefined,
        );
        await waitFor('the delayed try to be answered', () => (participant.journal.some((e) => e.key === key && e.phase === 'try') ? true : undefined));
        assert.equal(participant.available('widget'), stock, 'the reservation is released');
        assert.equal((await restarted.request('GET', `/v1/sessions/${key}`)).status, 404);
        const retried = await restarted.request('POST', '/v1/commits', { key, changes });
        assert.equal(retried.status, 200, JSON.stringify(retried.body));
        assert.equal(participant.confirmed(key), 1);
        assert.equal(participant.available('widget'), stock - 5);
        assert.equal(countRows(join(dir, 'main.db'), key), 1);
        assert.deepEqual(protocolViolations(participant.journal, key), []);
      } finally {
        await restarted.process.stop();
      }
    });
  }
});

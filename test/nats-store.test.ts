/**
 * What only the `nats` store type does: it opens only on a stream that can give exactly
 * once (it exists, its duplicate window covers the retention), refuses at `/changes` what
 * JetStream could not take or what belongs to commitd or NATS, publishes only after the
 * commit point with the worker's headers and data as sent, answers 503 while NATS is down,
 * and — after a commitd killed between the publishes and the marker — re-publishes on
 * recovery while the stream keeps one copy of each message.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { pino } from 'pino';
import { sessionIdOfChanges } from '../src/core/session-id.ts';
import { natsStoreType, type NatsOptions } from '../src/stores/nats/store.ts';
import { makeTempDir, removeTempDir } from './harness/child.ts';
import { natsBinary, startNats, type NatsServer } from './harness/nats.ts';
import { freePort } from './harness/ports.ts';
import { skipUnlessFound } from './harness/require.ts';
import { natsReader, type NatsReader } from './support/nats.ts';
import { startProcess } from './support/process.ts';
import { startTestService, type TestService } from './support/service.ts';
import { waitFor } from './support/wait.ts';

const RETENTION_SECONDS = 3600;
const ctx = (name = 'events') => ({ name, logger: pino({ level: 'silent' }), dataDir: '.', retentionSeconds: RETENTION_SECONDS });

let unique = 0;
const freshKey = (label: string) => `${label}-${process.pid}-${++unique}`;

describe('nats store type', { skip: skipUnlessFound({ 'nats-server': natsBinary() }) }, () => {
  let nats: NatsServer;
  let reader: NatsReader;
  let service: TestService;
  const stream = `ev_${randomUUID().slice(0, 8)}`;
  const markerBucket = `markers_${randomUUID().slice(0, 8)}`;
  const inject = (method: 'POST' | 'GET', url: string, payload?: unknown) =>
    service.app.inject({
      method,
      url,
      headers: payload === undefined ? {} : { 'content-type': 'application/json' },
      payload: payload === undefined ? undefined : JSON.stringify(payload),
    });
  const problemOf = (response: { body: string }) => JSON.parse(response.body) as { code: string; detail: string; rule?: string };

  before(async () => {
    nats = await startNats();
    reader = await natsReader(nats.url);
    await reader.addStream(stream, ['orders.>', 'audit.*.log'], RETENTION_SECONDS);
    service = await startTestService({
      kv: 'sqlite',
      retentionSeconds: RETENTION_SECONDS,
      stores: [{ name: 'events', type: 'nats', options: { servers: nats.url, stream, markerBucket, statementTimeout: '1s' } }],
    });
  });
  after(async () => {
    await service?.dispose();
    await reader?.close();
    await nats?.cleanup();
  });

  describe('at open', () => {
    it('refuses a stream whose duplicate window is shorter than the retention period', async () => {
      const short = `short_${randomUUID().slice(0, 8)}`;
      await reader.addStream(short, [`${short}.>`], RETENTION_SECONDS - 1);
      await assert.rejects(
        async () => natsStoreType.create({ servers: nats.url, stream: short }, ctx()),
        (err: Error) => {
          assert.match(err.message, /duplicate_window/);
          assert.match(err.message, new RegExp(`${RETENTION_SECONDS - 1} s .* ${RETENTION_SECONDS} s`));
          return true;
        },
      );
    });

    it('refuses a stream that does not exist, and a server it cannot reach', async () => {
      await assert.rejects(
        async () => natsStoreType.create({ servers: nats.url, stream: 'no_such_stream' }, ctx()),
        /no JetStream stream named "no_such_stream"/,
      );
      const closed = `nats://127.0.0.1:${await freePort()}`;
      await assert.rejects(
        async () => natsStoreType.create({ servers: closed, stream }, ctx()),
        (err: Error & { code?: string }) => err.code === 'UNAVAILABLE',
      );
    });

    it('a runtime registration of such a stream is refused with 400, naming the window', async () => {
      const short = `reg_${randomUUID().slice(0, 8)}`;
      await reader.addStream(short, [`${short}.>`], 60);
      const options: NatsOptions = { servers: nats.url, stream: short };
      const response = await inject('POST', '/v1/stores', { name: 'shortwindow', type: 'nats', options });
      assert.equal(response.statusCode, 400, response.body);
      assert.match(problemOf(response).detail, /duplicate_window/);
    });
  });

  describe('at /changes', () => {
    async function changesAnswer(changes: unknown[]) {
      const key = freshKey('changes');
      const begun = await inject('POST', '/v1/sessions', { key, stores: ['events'] });
      assert.equal(begun.statusCode, 201, begun.body);
      return inject('POST', `/v1/sessions/${key}/changes`, { store: 'events', changes });
    }

    it('refuses a subject outside the stream with 400 naming the subject', async () => {
      const response = await changesAnswer([
        { subject: 'orders.ok', data: 'x' },
        { subject: 'payments.created', data: 'x' },
      ]);
      assert.equal(response.statusCode, 400, response.body);
      const problem = problemOf(response);
      assert.equal(problem.code, 'invalid_request');
      assert.match(problem.detail, /"payments\.created" is outside stream/);
      // Wildcards of the stream's subjects: `*` one token, `>` the rest.
      assert.equal((await changesAnswer([{ subject: 'audit.x.y.log', data: 'x' }])).statusCode, 400);
      assert.equal(
        (
          await changesAnswer([
            { subject: 'audit.x.log', data: 'x' },
            { subject: 'orders.a.b.c', data: 1 },
          ])
        ).statusCode,
        200,
      );
    });

    it('refuses subjects that cannot be published to (wildcards, empty tokens, spaces)', async () => {
      for (const subject of ['orders.*', 'orders.>', 'orders..x', 'orders.a b', 'orders.']) {
        const response = await changesAnswer([{ subject, data: 'x' }]);
        assert.equal(response.statusCode, 400, `${subject}: ${response.body}`);
      }
    });

    it('refuses the marker bucket and the subjects of NATS itself as bookkeeping', async () => {
      const cases = [
        [`$KV.${markerBucket}.events.00`, 'marker-bucket'],
        ['$KV.other.key', 'reserved-subject'],
        [`$JS.API.STREAM.DELETE.${stream}`, 'reserved-subject'],
        ['$SYS.REQ.SERVER.PING', 'reserved-subject'],
        ['_INBOX.abc', 'reserved-subject'],
      ] as const;
      for (const [subject, rule] of cases) {
        const response = await changesAnswer([{ subject, data: 'x' }]);
        assert.equal(response.statusCode, 400, `${subject}: ${response.body}`);
        assert.equal(problemOf(response).rule, rule, subject);
      }
    });

    it('refuses Nats-* headers (Nats-Msg-Id, Nats-Expected-*, …) and headers NATS would not keep as sent', async () => {
      for (const name of ['Nats-Msg-Id', 'nats-expected-last-sequence', 'Nats-Rollup', 'NATS-TTL']) {
        const response = await changesAnswer([{ subject: 'orders.h', data: 'x', headers: { [name]: '1' } }]);
        assert.equal(response.statusCode, 400, `${name}: ${response.body}`);
        assert.equal(problemOf(response).rule, 'reserved-header', name);
      }
      for (const headers of [{ 'Bad Name': 'x' }, { 'X-A': 'two\r\nlines' }, { 'X-A': ' padded' }]) {
        const response = await changesAnswer([{ subject: 'orders.h', data: 'x', headers }]);
        assert.equal(response.statusCode, 400, `${JSON.stringify(headers)}: ${response.body}`);
      }
    });

    it('refuses a message larger than the server takes with 413', async () => {
      const response = await changesAnswer([{ subject: 'orders.big', data: 'x'.repeat(1024 * 1024 + 1) }]);
      assert.equal(response.statusCode, 413, response.body);
    });
  });

  it('publishes only after the commit point, with the headers and data as sent; a cancel publishes nothing', async () => {
    const key = freshKey('publish');
    const subject = `orders.${key}`;
    assert.equal((await inject('POST', '/v1/sessions', { key, stores: ['events'] })).statusCode, 201);
    const changes = [
      { subject, data: 'plain text', headers: { 'X-Order': '42', 'Content-Type': 'text/plain' } },
      { subject, data: { total: 5, items: ['a'], at: { z: 1, a: 2 } } },
    ];
    assert.equal((await inject('POST', `/v1/sessions/${key}/changes`, { store: 'events', changes })).statusCode, 200);
    assert.equal(await reader.count(stream, subject), 0, 'nothing is published before commit');
    const committed = await inject('POST', `/v1/sessions/${key}/commit`);
    assert.equal(committed.statusCode, 200, committed.body);
    assert.equal(JSON.parse(committed.body).sessionId, sessionIdOfChanges({ events: changes }));

    const [first, second] = await reader.messages(stream, subject);
    assert.ok(first && second);
    assert.equal(first.string(), 'plain text');
    assert.equal(first.header.get('X-Order'), '42');
    assert.equal(first.header.get('Content-Type'), 'text/plain');
    assert.match(first.header.get('Nats-Msg-Id'), new RegExp(`^commitd:events:${Buffer.from(key).toString('hex')}:[0-9a-f]{32}:0$`));
    assert.equal(second.string(), '{"at":{"a":2,"z":1},"items":["a"],"total":5}', 'JSON data is published as its canonical JSON');
    assert.match(second.header.get('Nats-Msg-Id'), /:1$/);

    const cancelled = freshKey('cancel');
    assert.equal((await inject('POST', '/v1/sessions', { key: cancelled, stores: ['events'] })).statusCode, 201);
    await inject('POST', `/v1/sessions/${cancelled}/changes`, { store: 'events', changes: [{ subject: `orders.${cancelled}`, data: 'x' }] });
    assert.equal((await inject('POST', `/v1/sessions/${cancelled}/cancel`)).statusCode, 200);
    assert.equal(await reader.count(stream, `orders.${cancelled}`), 0);
  });

  it('answers 503 while NATS is down, and commits once it is back', async () => {
    const key = freshKey('down');
    const changes = { events: [{ subject: `orders.${key}`, data: 'x' }] };
    await nats.kill();
    try {
      const refused = await inject('POST', '/v1/commits', { key, changes });
      assert.equal(refused.statusCode, 503, refused.body);
    } finally {
      await nats.restart();
    }
    const committed = await waitFor(
      'a commit after NATS is back',
      async () => {
        const response = await inject('POST', '/v1/commits', { key, changes });
        return response.statusCode === 200 ? response : undefined;
      },
      { timeoutMs: 20_000 },
    );
    assert.equal(JSON.parse(committed.body).sessionId, sessionIdOfChanges(changes));
    assert.equal(await reader.count(stream, `orders.${key}`), 1);
  });
});

describe('nats store: a commitd killed between the publishes and the marker', { skip: skipUnlessFound({ 'nats-server': natsBinary() }) }, () => {
  let nats: NatsServer;
  let reader: NatsReader;
  const root = makeTempDir('nats-recovery');

  before(async () => {
    nats = await startNats();
    reader = await natsReader(nats.url);
  });
  after(async () => {
    await reader?.close();
    await nats?.cleanup();
    await removeTempDir(root);
  });

  it('recovery re-publishes; the stream drops the repeats and keeps one copy of each message', async () => {
    const stream = 'recovered';
    const markerBucket = 'recovery_markers';
    // commitd's default retention is a day: so must the window be.
    await reader.addStream(stream, ['shop.>'], 86_400);
    const options = {
      dir: join(root, 'commitd'),
      stores: [{ name: 'events', type: 'nats', options: { servers: nats.url, stream, markerBucket, statementTimeout: '1s' } }],
    };
    const first = await startProcess(options);
    // The marker bucket (created at open) takes no more entries: publishes pass, the marker fails.
    const bucketStream = `KV_${markerBucket}`;
    const bucketConfig = (await reader.jsm.streams.info(bucketStream)).config;
    await reader.nc.request(`$KV.${markerBucket}.filler`, 'x', { timeout: 5_000 });
    await reader.jsm.streams.update(bucketStream, { ...bucketConfig, max_msgs: 1 });

    const key = 'order-1';
    const changes = {
      events: [
        { subject: 'shop.order.created', data: { order: 1 } },
        { subject: 'shop.stock.reserved', data: { order: 1, sku: 'a' } },
      ],
    };
    const answer = await first.request('POST', '/v1/commits', { key, changes });
    assert.notEqual(answer.status, 200, 'the marker cannot be written yet');
    await waitFor('both messages published', async () => ((await reader.count(stream, 'shop.stock.reserved')) === 1 ? true : undefined), { timeoutMs: 15_000 });
    const state = await first.request('GET', `/v1/sessions/${key}`);
    assert.equal(state.body.state, 'committing', JSON.stringify(state.body));
    await first.process.kill();

    await reader.jsm.streams.update(bucketStream, { ...bucketConfig, max_msgs: -1 });
    const restarted = await startProcess(options);
    try {
      const shown = await waitFor(
        'the recovered session committed',
        async () => {
          const response = await restarted.request('GET', `/v1/sessions/${key}`);
          return response.body.state === 'committed' ? response : undefined;
        },
        { timeoutMs: 30_000 },
      );
      assert.equal(shown.body.sessionId, sessionIdOfChanges(changes));
      assert.match(restarted.process.output(), /dropped re-published messages as duplicates/, 'recovery published again');
      assert.equal(await reader.count(stream, 'shop.order.created'), 1);
      assert.equal(await reader.count(stream, 'shop.stock.reserved'), 1);
      assert.equal((await reader.jsm.streams.info(stream)).state.messages, 2, 'the stream holds one copy of each message');
      const again = await restarted.request('POST', '/v1/commits', { key, changes });
      assert.equal(again.body.sessionId, sessionIdOfChanges(changes));
      assert.equal((await reader.jsm.streams.info(stream)).state.messages, 2);
    } finally {
      await restarted.process.stop();
    }
  });
});

/**
 * DESIGN.md "The boundary", point 4, at the HTTP layer: values are kept exactly or
 * refused. A number a double cannot hold, a member named twice and bytes that are not
 * UTF-8 are answered 400 invalid_request naming what and where, before anything is
 * opened; what is accepted reaches the store exactly. Runs over the sqlite KV only.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { FastifyInstance, LightMyRequestResponse } from 'fastify';
import { sqliteRows, sqliteRun } from './support/rows.ts';
import { startTestService, type TestService } from './support/service.ts';

/** Asserts a 400 invalid_request problem and returns its detail. */
function refusedDetail(response: LightMyRequestResponse): string {
  assert.equal(response.statusCode, 400, `expected 400 invalid_request, got ${response.statusCode}: ${response.body}`);
  assert.match(String(response.headers['content-type']), /^application\/problem\+json/);
  const problem = JSON.parse(response.body) as Record<string, unknown>;
  assert.equal(problem.code, 'invalid_request', response.body);
  assert.equal(typeof problem.detail, 'string');
  return String(problem.detail);
}

let unique = 0;
const freshKey = (label: string) => `${label}-${process.pid}-${++unique}`;

/** One change writing `value` (spelt as raw JSON text) under `name`. */
const insertRaw = (name: string, valueJson: string) => `{"sql":"INSERT INTO vals (name, v) VALUES (?, ?)","params":[${JSON.stringify(name)},${valueJson}]}`;

describe('values are kept exactly or refused (DESIGN boundary point 4)', () => {
  let service: TestService;
  let app: FastifyInstance;

  /** A one-shot commit whose body is exactly `payload`. */
  const commitRaw = (payload: string | Buffer) => app.inject({ method: 'POST', url: '/v1/commits', headers: { 'content-type': 'application/json' }, payload });
  const oneShot = (key: string, changesJson: string) => commitRaw(`{"key":${JSON.stringify(key)},"changes":{"main":[${changesJson}]}}`);
  const stored = (name: string) =>
    sqliteRows<{ v: unknown; kind: string }>(join(service.dir, 'main.db'), 'SELECT v, typeof(v) AS kind FROM vals WHERE name = ?', name);

  before(async () => {
    service = await startTestService({ kv: 'sqlite' });
    app = service.app;
    // No declared type, so the column keeps exactly what was bound (no affinity conversion).
    sqliteRun(join(service.dir, 'main.db'), 'CREATE TABLE IF NOT EXISTS vals (name TEXT PRIMARY KEY, v)');
  });
  after(async () => {
    await service?.dispose();
  });

  describe('numbers', () => {
    it('2^53+1 is refused naming the number and where; nothing is committed and the key is not used up', async () => {
      const key = freshKey('big');
      const detail = refusedDetail(await oneShot(key, insertRaw(key, '9007199254740993')));
      assert.match(detail, /9007199254740993 at \$\.changes\.main\[0\]\.params\[1\]/);
      assert.match(detail, /cannot be kept exactly as a double/);
      assert.deepEqual(stored(key), []);
      assert.equal((await app.inject({ method: 'GET', url: `/v1/sessions/${key}` })).statusCode, 404);

      const retry = await oneShot(key, insertRaw(key, '"9007199254740993"'));
      assert.equal(retry.statusCode, 200, retry.body);
      assert.deepEqual(stored(key), [{ v: '9007199254740993', kind: 'text' }]);
    });

    it('an overflow (1e400) and a decimal that would round (1.00000000000000000001) are refused', async () => {
      for (const text of ['1e400', '1.00000000000000000001', '-9007199254740993']) {
        const key = freshKey('round');
        assert.match(refusedDetail(await oneShot(key, insertRaw(key, text))), new RegExp(`the number ${text.replace(/[.+]/g, '\\$&')} at `));
        assert.deepEqual(stored(key), []);
      }
    });

    it('2^53, 0.1 and other shortest spellings (1e3, 12.50, -0) are accepted and stored exactly', async () => {
      const cases: Array<[string, number]> = [
        ['9007199254740992', 2 ** 53],
        ['0.1', 0.1],
        ['1e3', 1000],
        ['12.50', 12.5],
        ['-0', -0],
      ];
      for (const [text, value] of cases) {
        const key = freshKey('exact');
        const committed = await oneShot(key, insertRaw(key, text));
        assert.equal(committed.statusCode, 200, `${text}: ${committed.body}`);
        const [row] = stored(key);
        // `===`, not Object.is: whether SQLite keeps the sign of a zero is not commitd's to say.
        assert.ok(row?.v === value, `${text} stored as ${String(row?.v)}`);
      }
    });
  });

  describe('duplicate member names', () => {
    it('at the top level, even with equal values: refused, naming the member', async () => {
      const key = freshKey('dup-top');
      const detail = refusedDetail(await commitRaw(`{"key":${JSON.stringify(key)},"key":${JSON.stringify(key)},"changes":{"main":[${insertRaw(key, '1')}]}}`));
      assert.match(detail, /names the member \$\.key twice/);
      assert.deepEqual(stored(key), []);
    });

    it('with different values (today the last one wins): refused', async () => {
      const detail = refusedDetail(await commitRaw(`{"key":"dupA","key":"dupB","changes":{"main":[${insertRaw('dupB', '1')}]}}`));
      assert.match(detail, /names the member \$\.key twice/);
      assert.deepEqual(stored('dupB'), []);
    });

    it('nested in a change: refused, naming the path', async () => {
      const key = freshKey('dup-nested');
      const change = `{"sql":"INSERT INTO vals (name, v) VALUES (?, ?)","params":[${JSON.stringify(key)},1],"params":[${JSON.stringify(key)},1]}`;
      const detail = refusedDetail(await oneShot(key, change));
      assert.match(detail, /names the member \$\.changes\.main\[0\]\.params twice/);
      assert.deepEqual(stored(key), []);
    });
  });

  describe('UTF-8', () => {
    const withBytes = (key: string, bytes: number[]) =>
      Buffer.concat([
        Buffer.from(`{"key":${JSON.stringify(key)},"changes":{"main":[{"sql":"INSERT INTO vals (name, v) VALUES (?, ?)","params":[${JSON.stringify(key)},"a`),
        Buffer.from(bytes),
        Buffer.from('b"]}]}}'),
      ]);

    it('an invalid byte inside a string: refused with its offset, not stored as U+FFFD', async () => {
      const key = freshKey('utf8-bad');
      const body = withBytes(key, [0xc3, 0x28]);
      const detail = refusedDetail(await commitRaw(body));
      assert.match(detail, new RegExp(`not valid UTF-8: the bytes from offset ${body.indexOf(0xc3)} `));
      assert.deepEqual(stored(key), []);
    });

    it('an overlong encoding (C0 AF) and an encoded lone surrogate (ED A0 80): refused', async () => {
      for (const bytes of [
        [0xc0, 0xaf],
        [0xed, 0xa0, 0x80],
      ]) {
        const key = freshKey('utf8-overlong');
        const body = withBytes(key, bytes);
        assert.match(refusedDetail(await commitRaw(body)), new RegExp(`offset ${body.indexOf(bytes[0] ?? 0)} `));
        assert.deepEqual(stored(key), []);
      }
    });

    it('an escaped lone surrogate ("\\ud800"), which a store would turn into U+FFFD: refused', async () => {
      const key = freshKey('surrogate');
      const detail = refusedDetail(await oneShot(key, insertRaw(key, '"a\\ud800b"')));
      assert.match(detail, /\$\.changes\.main\[0\]\.params\[1\].*unpaired UTF-16 surrogate/);
      assert.deepEqual(stored(key), []);
    });

    it('a UTF-8 byte order mark before the body: refused', async () => {
      const key = freshKey('bom');
      const body = Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(`{"key":${JSON.stringify(key)},"changes":{"main":[${insertRaw(key, '1')}]}}`)]);
      assert.match(refusedDetail(await commitRaw(body)), /byte order mark/);
      assert.deepEqual(stored(key), []);
    });

    it('a valid non-ASCII string ("zoë 🙂") is stored exactly', async () => {
      const key = freshKey('utf8-good');
      const committed = await oneShot(key, insertRaw(key, '"zoë 🙂"'));
      assert.equal(committed.statusCode, 200, committed.body);
      assert.deepEqual(stored(key), [{ v: 'zoë 🙂', kind: 'text' }]);
    });
  });
});

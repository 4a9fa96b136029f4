import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import xxhash from 'xxhash-wasm';
import { ChangeHasher, NotCanonicalizableError, canonicalJson, canonicalLine, sessionId, storeId, storeIdOfLines, toHex } from '../src/core/index.ts';

interface Vectors {
  stores: { changes: unknown[]; storeId: string }[];
  sessions: { stores: Record<string, unknown[]>; sessionId: string }[];
}

function vectorsFromDocs(): Vectors {
  const doc = readFileSync(new URL('../docs/session-id.md', import.meta.url), 'utf8');
  const block = /```json\n([\s\S]*?)```/.exec(doc);
  assert.ok(block, 'docs/session-id.md must hold a json block of vectors');
  return JSON.parse(block[1]) as Vectors;
}

const idOfSession = (stores: Record<string, unknown[]>) => toHex(sessionId(Object.entries(stores).map(([name, changes]) => [name, storeId(changes)] as const)));

describe('session IDs', () => {
  const vectors = vectorsFromDocs();

  it('recomputes every store vector of docs/session-id.md', () => {
    assert.ok(vectors.stores.length >= 3);
    for (const vector of vectors.stores) assert.equal(toHex(storeId(vector.changes)), vector.storeId);
  });

  it('hashing canonical lines gives the vectors too (the one-shot path hashes what it validated)', () => {
    for (const vector of vectors.stores) assert.equal(toHex(storeIdOfLines(vector.changes.map(canonicalLine))), vector.storeId);
  });

  it('recomputes every session vector of docs/session-id.md', () => {
    assert.ok(vectors.sessions.length >= 2);
    for (const vector of vectors.sessions) assert.equal(idOfSession(vector.stores), vector.sessionId);
  });

  it('IDs are 128 bits, 32 lower-case hex digits', () => {
    assert.match(toHex(storeId([{ a: 1 }])), /^[0-9a-f]{32}$/);
    assert.match(idOfSession({ s: [] }), /^[0-9a-f]{32}$/);
  });

  it('key order inside a change does not change the ID', () => {
    assert.equal(toHex(storeId([{ sql: 'x', params: [1] }])), toHex(storeId([{ params: [1], sql: 'x' }])));
  });

  it('change order does change the ID', () => {
    assert.notEqual(toHex(storeId([{ a: 1 }, { b: 2 }])), toHex(storeId([{ b: 2 }, { a: 1 }])));
  });

  it('splitting or joining changes changes the ID', () => {
    assert.notEqual(toHex(storeId([['a', 'b']])), toHex(storeId([['a'], ['b']])));
  });

  it('store names are part of the session ID; the order stores are given in is not', () => {
    const changes = [{ a: 1 }];
    assert.notEqual(idOfSession({ left: changes }), idOfSession({ right: changes }));
    assert.equal(idOfSession({ x: [{ a: 1 }], y: [] }), idOfSession({ y: [], x: [{ a: 1 }] }));
  });

  it('the running hasher equals hashing the whole list', () => {
    const hasher = new ChangeHasher();
    const changes = [{ a: 1 }, { b: 'two' }];
    for (const change of changes) hasher.add(change);
    assert.deepEqual(hasher.digest(), storeId(changes));
  });

  it('a store ID is XXH64 (seeds 0 and 1) over the whole stream, however large and however it is fed', async () => {
    const xx = await xxhash();
    // Lines long enough that the hasher streams part of them, one of them not ASCII.
    const changes = [{ v: 'x'.repeat(40_000) }, { v: 'zoë 🙂'.repeat(9_000) }, { v: 1 }, { v: 'y'.repeat(70_000) }];
    const stream = changes.map(canonicalLine).join('');
    const expected = `${xx.h64ToString(stream, 0n)}${xx.h64ToString(stream, 1n)}`;
    const hasher = new ChangeHasher();
    for (const [i, change] of changes.entries()) {
      hasher.add(change);
      // Asking for the ID on the way must not change where it ends.
      if (i === 1) assert.equal(toHex(hasher.digest()), toHex(storeId(changes.slice(0, 2))));
    }
    assert.equal(toHex(hasher.digest()), expected);
    assert.equal(toHex(storeId(changes)), expected);
    assert.equal(toHex(storeId([])), `${xx.h64ToString('', 0n)}${xx.h64ToString('', 1n)}`);
  });

  it('values without a canonical form are rejected', () => {
    for (const bad of [Number.NaN, Number.POSITIVE_INFINITY, '\ud800']) {
      assert.throws(() => canonicalJson({ v: bad }), NotCanonicalizableError);
    }
    assert.throws(() => canonicalJson(undefined), NotCanonicalizableError);
  });
});

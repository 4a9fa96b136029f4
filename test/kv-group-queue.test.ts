/**
 * The group-commit queue (`src/kv/group-commit.ts`) on its own, with a backend whose answers
 * the test releases one by one: how many groups leave at once, and that writes of one key
 * leave in the order they were issued even with two groups in flight.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { GroupCommit, type GroupMember, type Settled } from '../src/kv/group-commit.ts';

interface Write extends GroupMember {
  readonly name: string;
}

/** A backend that records each group sent and answers when the test says so. */
function heldBackend() {
  const sent: { readonly names: string[]; readonly answer: () => void }[] = [];
  const send = (members: readonly Write[]) =>
    new Promise<readonly Settled<string>[]>((resolve) => {
      sent.push({ names: members.map((m) => m.name), answer: () => resolve(members.map((m) => ({ ok: true, value: m.name }))) });
    });
  return { sent, send };
}

const write = (name: string, ...keys: string[]): Write => ({ name, keys, bytes: 10 });
const turn = () => new Promise((resolve) => setImmediate(resolve));

describe('group commit queue', () => {
  it('with two slots, a second group leaves while the first is in flight; later writes wait for a slot', async () => {
    const backend = heldBackend();
    const queue = new GroupCommit<Write, string>({ send: backend.send, maxMembers: 64, maxBytes: 1 << 20, maxInFlight: 2 });
    const first = queue.submit(write('a', 'k/a'));
    const second = queue.submit(write('b', 'k/b'));
    const third = queue.submit(write('c', 'k/c'));
    const fourth = queue.submit(write('d', 'k/d'));
    assert.deepEqual(
      backend.sent.map((group) => group.names),
      [['a'], ['b']],
      'the first two leave at once, each alone',
    );
    backend.sent[0]!.answer();
    assert.equal(await first, 'a');
    await turn();
    assert.deepEqual(backend.sent[2]?.names, ['c', 'd'], 'the writes that waited leave together in the freed slot');
    backend.sent[1]!.answer();
    backend.sent[2]!.answer();
    assert.deepEqual(await Promise.all([second, third, fourth]), ['b', 'c', 'd']);
  });

  it('a write waits while an earlier write of one of its keys is in flight, and so do later writes of that key', async () => {
    const backend = heldBackend();
    const queue = new GroupCommit<Write, string>({ send: backend.send, maxMembers: 64, maxBytes: 1 << 20, maxInFlight: 2 });
    const done: string[] = [];
    const track = (p: Promise<string>) => p.then((name) => done.push(name));
    const all = [
      track(queue.submit(write('create x', 'k/x'))),
      track(queue.submit(write('update x', 'k/x'))),
      track(queue.submit(write('other', 'k/y'))),
      track(queue.submit(write('delete x', 'k/x', 'k/z'))),
    ];
    assert.deepEqual(
      backend.sent.map((group) => group.names),
      [['create x'], ['other']],
      'the second slot takes a write of another key, not the next write of k/x',
    );
    backend.sent[1]!.answer();
    await turn();
    assert.equal(backend.sent.length, 2, 'k/x is still in flight: its later writes wait even with a slot free');
    backend.sent[0]!.answer();
    await turn();
    assert.deepEqual(backend.sent[2]?.names, ['update x'], 'one write of a key per group');
    backend.sent[2]!.answer();
    await turn();
    assert.deepEqual(backend.sent[3]?.names, ['delete x']);
    backend.sent[3]!.answer();
    await Promise.all(all);
    assert.deepEqual(done, ['other', 'create x', 'update x', 'delete x']);
  });

  it('a write too large to join a group keeps its place before later writes of its key', async () => {
    const backend = heldBackend();
    const queue = new GroupCommit<Write, string>({ send: backend.send, maxMembers: 64, maxBytes: 100, maxInFlight: 1 });
    const all = [
      queue.submit(write('first', 'k/a')),
      queue.submit(write('second', 'k/c')),
      queue.submit({ name: 'big', keys: ['k/b'], bytes: 95 }),
      queue.submit(write('small b', 'k/b')),
    ];
    backend.sent[0]!.answer();
    await turn();
    assert.deepEqual(backend.sent[1]?.names, ['second'], 'the large write does not fit beside it, and the later write of its key waits for it');
    backend.sent[1]!.answer();
    await turn();
    assert.deepEqual(backend.sent[2]?.names, ['big']);
    backend.sent[2]!.answer();
    await turn();
    assert.deepEqual(backend.sent[3]?.names, ['small b']);
    backend.sent[3]!.answer();
    await Promise.all(all);
  });
});

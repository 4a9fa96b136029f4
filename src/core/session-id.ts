/**
 * Session IDs: xxHash over RFC 8785 canonical JSON. The algorithm is a contract,
 * spelled out with test vectors in docs/session-id.md; change nothing here without it.
 *
 * - A store ID hashes the stream `jcs(change1) "\n" jcs(change2) "\n" …`. Canonical JSON
 *   never contains a raw newline, so the stream is unambiguous.
 * - Every ID is 128 bits: XXH64 with seed 0, then XXH64 with seed 1, both over the same
 *   bytes, each big-endian; shown as 32 lower-case hex digits.
 * - A session ID hashes `jcs([[name, storeIdHex], …])` with the stores in ascending name
 *   order (UTF-16 code units, as JCS orders object keys).
 * @module
 */
import canonicalize from 'canonicalize';
import xxhash from 'xxhash-wasm';
import { CommitdError, errorMessage } from '../errors/core.ts';
import { toHex } from './keys.ts';

const xx = await xxhash();

/** Length of every ID in bytes. */
export const ID_BYTES = 16;

/** A value that has no RFC 8785 form (NaN, Infinity, a lone surrogate, a cycle, `undefined`). */
export class NotCanonicalizableError extends CommitdError {
  constructor(reason: string) {
    super('NOT_CANONICALIZABLE', `change is not canonicalizable JSON: ${reason}`);
  }
}

/** The RFC 8785 canonical form of a JSON value. */
export function canonicalJson(value: unknown): string {
  let text: string | undefined;
  try {
    text = canonicalize(value);
  } catch (err) {
    throw new NotCanonicalizableError(errorMessage(err));
  }
  if (text === undefined) throw new NotCanonicalizableError('value is undefined');
  return text;
}

/** A change as the store-ID stream holds it: its canonical form and a newline. */
export function canonicalLine(change: unknown): string {
  return `${canonicalJson(change)}\n`;
}

function idFromDigests(first: bigint, second: bigint): Uint8Array {
  const id = new Uint8Array(ID_BYTES);
  const view = new DataView(id.buffer);
  view.setBigUint64(0, first);
  view.setBigUint64(8, second);
  return id;
}

/** The hex of {@link idFromDigests} without the bytes: what the HTTP answer and the record carry. */
function hexFromDigests(first: bigint, second: bigint): string {
  return `${first.toString(16).padStart(16, '0')}${second.toString(16).padStart(16, '0')}`;
}

/** One streaming XXH64 state. */
type Hash64 = ReturnType<typeof xx.create64>;

/**
 * Characters of lines a {@link ChangeHasher} keeps before feeding them to streaming hashes.
 * A session's usual changes stay below it and are hashed in one call per seed at digest:
 * a streaming state costs more to make and feed (it is copied in and out of the wasm
 * memory on every call) than hashing a short text does. XXH64 over chunks equals XXH64
 * over their concatenation, so where the text is cut does not change the ID.
 */
const BUFFERED_CHARS = 64 * 1024;

/** The running hash of one store's changes, in the order they were applied. */
export class ChangeHasher {
  /** Lines not yet fed to {@link #streams}. */
  #pending = '';
  /** Made once the lines outgrow {@link BUFFERED_CHARS}. */
  #streams: { readonly first: Hash64; readonly second: Hash64 } | undefined;
  #count = 0;

  /** Adds one change; returns its line, canonical form and newline (callers may reuse it). */
  add(change: unknown): string {
    const line = canonicalLine(change);
    this.addLine(line);
    return line;
  }

  /** Adds one change already in the form {@link canonicalLine} gives. */
  addLine(line: string): void {
    this.#pending += line;
    this.#count += 1;
    if (this.#pending.length > BUFFERED_CHARS) this.#flush();
  }

  /** How many changes were added. */
  get count(): number {
    return this.#count;
  }

  /** The 128-bit store ID of everything added so far. Does not reset the hasher. */
  digest(): Uint8Array {
    const [first, second] = this.#digests();
    return idFromDigests(first, second);
  }

  /** {@link digest} as 32 hex digits. */
  digestHex(): string {
    const [first, second] = this.#digests();
    return hexFromDigests(first, second);
  }

  #digests(): [bigint, bigint] {
    if (!this.#streams) return [xx.h64(this.#pending, 0n), xx.h64(this.#pending, 1n)];
    this.#flush();
    return [this.#streams.first.digest(), this.#streams.second.digest()];
  }

  #flush(): void {
    this.#streams ??= { first: xx.create64(0n), second: xx.create64(1n) };
    this.#streams.first.update(this.#pending);
    this.#streams.second.update(this.#pending);
    this.#pending = '';
  }
}

/** The store ID of a list of changes (same as feeding a ChangeHasher one by one). */
export function storeId(changes: Iterable<unknown>): Uint8Array {
  const hasher = new ChangeHasher();
  for (const change of changes) hasher.add(change);
  return hasher.digest();
}

/** The store ID of changes given as {@link canonicalLine}s. */
export function storeIdOfLines(lines: Iterable<string>): Uint8Array {
  const hasher = new ChangeHasher();
  for (const line of lines) hasher.addLine(line);
  return hasher.digest();
}

/**
 * The running hash of one session's changes: a {@link ChangeHasher} per store of the
 * session, so that the session ID it gives counts every store — those that got no change
 * contribute the hash of the empty stream, as their committables' IDs will.
 */
export class SessionHasher {
  readonly #stores: Map<string, ChangeHasher>;
  /** The ID of what was added so far; a one-shot asks for it several times between changes. */
  #idHex: string | undefined;

  /** @param stores every store of the session, changes or not */
  constructor(stores: Iterable<string>) {
    this.#stores = new Map([...stores].map((name) => [name, new ChangeHasher()]));
  }

  /** Adds changes of `store`, given as {@link canonicalLine}s, in the order they apply. */
  addLines(store: string, lines: Iterable<string>): void {
    const hasher = this.#stores.get(store);
    if (!hasher) throw new RangeError(`store ${JSON.stringify(store)} is not part of this session`);
    this.#idHex = undefined;
    for (const line of lines) hasher.addLine(line);
  }

  /** The session ID of everything added so far, as 32 hex digits. */
  sessionIdHex(): string {
    this.#idHex ??= sessionIdHexOfPairs([...this.#stores].map(([name, hasher]) => [name, hasher.digestHex()]));
    return this.#idHex;
  }
}

/**
 * The session ID of a session whose stores are exactly the members of `changes` (a store
 * without changes is a member with `[]`), as 32 hex digits: what its commit answers.
 */
export function sessionIdOfChanges(changes: Readonly<Record<string, Iterable<unknown>>>): string {
  return toHex(sessionId(Object.entries(changes).map(([name, list]) => [name, storeId(list)] as const)));
}

/** The session ID from each store's ID; order of the input does not matter. */
export function sessionId(stores: Iterable<readonly [name: string, id: Uint8Array]>): Uint8Array {
  const text = sessionIdText([...stores].map(([name, id]) => [name, toHex(id)]));
  return idFromDigests(xx.h64(text, 0n), xx.h64(text, 1n));
}

/** {@link sessionId} of store IDs given as hex, as hex. */
function sessionIdHexOfPairs(pairs: [name: string, idHex: string][]): string {
  const text = sessionIdText(pairs);
  return hexFromDigests(xx.h64(text, 0n), xx.h64(text, 1n));
}

/** A lone surrogate: with the `u` flag a well-formed pair is one code point and does not match. */
const LONE_SURROGATE = /\p{Cs}/u;

/** The hashed text of a session ID: `jcs([[name, storeIdHex], …])`, ascending by name. Sorts `pairs`. */
function sessionIdText(pairs: [name: string, idHex: string][]): string {
  pairs.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  // An array of arrays of well-formed strings: its JCS form is exactly JSON.stringify's, so
  // the general canonicalizer (a walk that checks each string's characters) is only needed
  // to refuse a name JCS has no form for.
  if (pairs.some(([name]) => LONE_SURROGATE.test(name))) return canonicalJson(pairs);
  return JSON.stringify(pairs);
}

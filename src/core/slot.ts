/**
 * The slot where a MultiCommitter keeps the key of its open session, durably, before any
 * committable begins. The default lives in one KV key; the coordinator supplies its own
 * slot, backed by the session record, so one write serves both.
 * @module
 */
import type { Kv } from '../kv/kv.ts';

/** What a successful commit produced. */
export interface CommitResult {
  /** The session ID (128 bits). */
  readonly sessionId: Uint8Array;
  /** Each committable's ID, by name, in ascending name order. */
  readonly stores: ReadonlyMap<string, Uint8Array>;
}

/**
 * Durable storage for the key of the open session. `Receipt` is what emptying the slot
 * after a commit gives back (the coordinator's slot: the result record it wrote).
 */
export interface SessionSlot<Receipt = void> {
  /** The key held in the slot, if any. */
  read(): Promise<Uint8Array | undefined>;
  /** Durably writes `key` into the empty slot; rejects if it is taken. */
  claim(key: Uint8Array): Promise<void>;
  /** Empties the slot after every committable committed. */
  release(key: Uint8Array, result: CommitResult): Promise<Receipt>;
  /** Empties the slot after an explicit cancel: nothing of the session was committed. */
  abandon(key: Uint8Array): Promise<void>;
}

/** True for a slot, false for a KV (the two things a MultiCommitter can be given). */
export function isSlot<Receipt>(source: Kv | SessionSlot<Receipt>): source is SessionSlot<Receipt> {
  return 'claim' in source && 'release' in source && 'abandon' in source;
}

/** A slot in one KV key; the value is `{"key":"<base64>"}`. */
export class KvSlot implements SessionSlot {
  readonly #kv: Kv;
  readonly #slotKey: string;
  #revision = 0;

  constructor(kv: Kv, slotKey: string) {
    this.#kv = kv;
    this.#slotKey = slotKey;
  }

  async read(): Promise<Uint8Array | undefined> {
    const entry = await this.#kv.get(this.#slotKey);
    if (!entry) return undefined;
    this.#revision = entry.revision;
    const { key } = JSON.parse(entry.value) as { key: string };
    return new Uint8Array(Buffer.from(key, 'base64'));
  }

  async claim(key: Uint8Array): Promise<void> {
    this.#revision = await this.#kv.create(this.#slotKey, JSON.stringify({ key: Buffer.from(key).toString('base64') }));
  }

  /** Deletes the slot at the revision this slot read or wrote, so a changed slot fails. */
  async release(): Promise<void> {
    await this.#kv.delete(this.#slotKey, this.#revision);
  }

  async abandon(): Promise<void> {
    await this.#kv.delete(this.#slotKey, this.#revision);
  }
}

/**
 * A store that keeps its data in memory, built on the committable helper: the model of a
 * store type for tests, including skip mode on recovery.
 */
import { describeKey } from '../../src/core/keys.ts';
import { HelperCommittable, MarkerExistsError, type StoreDriver } from '../../src/stores/helper.ts';

/** One change: set `key` to `value`. */
export interface MemoryChange {
  readonly set: string;
  readonly value: unknown;
}

/** The shared datastore: committed data plus one marker per committed key. */
export class MemoryDatastore {
  readonly data = new Map<string, unknown>();
  readonly markers = new Map<string, Uint8Array>();
  commits = 0;

  /** A committable for one session on this datastore. */
  session(name: string): HelperCommittable<MemoryChange> {
    return new HelperCommittable(name, new MemoryDriver(this));
  }
}

class MemoryDriver implements StoreDriver<MemoryChange> {
  #pending: MemoryChange[] = [];

  constructor(readonly store: MemoryDatastore) {}

  async findMarker(key: Uint8Array): Promise<Uint8Array | undefined> {
    return this.store.markers.get(describeKey(key));
  }

  async open(): Promise<void> {
    this.#pending = [];
  }

  async apply(change: MemoryChange): Promise<void> {
    this.#pending.push(change);
  }

  async commit(key: Uint8Array, id: Uint8Array): Promise<void> {
    const stored = this.store.markers.get(describeKey(key));
    if (stored) throw new MarkerExistsError(key, stored);
    for (const change of this.#pending) this.store.data.set(change.set, change.value);
    this.store.markers.set(describeKey(key), id);
    this.store.commits += 1;
    this.#pending = [];
  }

  async rollback(): Promise<void> {
    this.#pending = [];
  }
}

/**
 * A prefix watch on etcd (the `watch` of the KV contract): list the prefix, then watch it
 * from the revision after that list, so no change falls between the two. etcd3 reconnects a
 * watcher by itself and resumes from the last revision it saw; when etcd cannot resume it
 * (the revision was compacted) it cancels the watcher, and this re-lists and watches anew.
 * @module
 */
import type { IKeyValue, Watcher } from 'etcd3';
import type { KvEntry, KvWatch, KvWatchEvent } from './kv.ts';

/** How long after a lost watch or a failed list the watch tries again, in ms. */
const RETRY_MS = 500;

/** What the watch needs from the etcd backend. */
export interface EtcdWatchSource {
  /** The prefix's entries and the store revision they were read at. */
  listAt(prefix: string): Promise<{ entries: KvEntry[]; revision: number }>;
  /** A connected watcher of `prefix` from `revision` on. */
  watcher(prefix: string, fromRevision: number): Promise<Watcher>;
}

export class EtcdPrefixWatch implements KvWatch {
  readonly #source: EtcdWatchSource;
  readonly #prefix: string;
  readonly #onEvent: (event: KvWatchEvent) => void;
  readonly #onError: (err: Error) => void;
  #watcher: Watcher | undefined;
  #retry: NodeJS.Timeout | undefined;
  #closed = false;

  constructor(source: EtcdWatchSource, prefix: string, onEvent: (event: KvWatchEvent) => void, onError?: (err: Error) => void) {
    this.#source = source;
    this.#prefix = prefix;
    this.#onEvent = onEvent;
    this.#onError = onError ?? (() => undefined);
    void this.#start();
  }

  close(): void {
    this.#closed = true;
    clearTimeout(this.#retry);
    void this.#watcher?.cancel().catch(() => undefined);
    this.#watcher = undefined;
  }

  async #start(): Promise<void> {
    if (this.#closed) return;
    try {
      const { entries, revision } = await this.#source.listAt(this.#prefix);
      if (this.#closed) return;
      const watcher = await this.#source.watcher(this.#prefix, revision + 1);
      if (this.#closed) {
        void watcher.cancel().catch(() => undefined);
        return;
      }
      this.#watcher = watcher;
      this.#onEvent({ type: 'snapshot', entries });
      watcher.on('put', (kv: IKeyValue) => this.#emit({ type: 'put', entry: toEntry(kv) }));
      watcher.on('delete', (kv: IKeyValue) => this.#emit({ type: 'delete', key: kv.key.toString() }));
      watcher.on('error', (err: Error) => this.#lost(watcher, err));
    } catch (err) {
      this.#onError(err instanceof Error ? err : new Error(String(err)));
      this.#again();
    }
  }

  #emit(event: KvWatchEvent): void {
    if (!this.#closed) this.#onEvent(event);
  }

  #lost(watcher: Watcher, err: Error): void {
    if (this.#watcher !== watcher) return;
    this.#watcher = undefined;
    void watcher.cancel().catch(() => undefined);
    this.#onError(err);
    this.#again();
  }

  #again(): void {
    if (this.#closed) return;
    this.#retry = setTimeout(() => void this.#start(), RETRY_MS);
    this.#retry.unref();
  }
}

function toEntry(kv: IKeyValue): KvEntry {
  return { key: kv.key.toString(), value: kv.value.toString(), revision: Number(kv.mod_revision) };
}

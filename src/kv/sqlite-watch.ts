/**
 * Prefix watches on the embedded KV. SQLite has no change feed, so a watch compares: after
 * every write of this process (at once, in-process) and every {@link POLL_MS} when the
 * file's revision counter moved (a write by another process on the same file), it re-lists
 * each watched prefix and reports what differs from its last listing as puts and deletes.
 * Values whose TTL ran out disappear at the next comparison. Several writes between two
 * comparisons arrive as their net effect, which is all a cache of the prefix needs.
 * @module
 */
import type { KvEntry, KvWatch, KvWatchEvent } from './kv.ts';

/** How often the revision counter is read for writes by other processes, in ms. */
const POLL_MS = 500;

/** What the hub needs from the backend. */
export interface SqliteWatchSource {
  list(prefix: string): KvEntry[];
  currentRevision(): number;
}

interface Watcher {
  readonly prefix: string;
  readonly onEvent: (event: KvWatchEvent) => void;
  readonly onError: (err: Error) => void;
  /** Revision of each key at the last comparison. */
  seen: Map<string, number>;
}

export class SqliteWatchHub {
  readonly #source: SqliteWatchSource;
  readonly #watchers = new Set<Watcher>();
  #timer: NodeJS.Timeout | undefined;
  #scheduled = false;
  #lastRevision = -1;

  constructor(source: SqliteWatchSource) {
    this.#source = source;
  }

  watch(prefix: string, onEvent: (event: KvWatchEvent) => void, onError?: (err: Error) => void): KvWatch {
    const watcher: Watcher = { prefix, onEvent, onError: onError ?? (() => undefined), seen: new Map() };
    this.#watchers.add(watcher);
    // The snapshot comes asynchronously, as the etcd backend's does.
    setImmediate(() => {
      if (!this.#watchers.has(watcher)) return;
      try {
        const entries = this.#source.list(prefix);
        watcher.seen = new Map(entries.map((entry) => [entry.key, entry.revision]));
        onEvent({ type: 'snapshot', entries });
      } catch (err) {
        watcher.onError(err instanceof Error ? err : new Error(String(err)));
      }
    });
    this.#timer ??= setInterval(() => this.#poll(), POLL_MS).unref();
    return {
      close: () => {
        this.#watchers.delete(watcher);
        if (this.#watchers.size === 0) this.stop();
      },
    };
  }

  /** A write of this process committed (on `keys`, when known): compare soon, coalesced, if a watch covers it. */
  changed(keys?: readonly string[]): void {
    if (this.#watchers.size === 0 || this.#scheduled) return;
    const watched = [...this.#watchers].map((watcher) => watcher.prefix);
    if (keys !== undefined && !keys.some((key) => watched.some((prefix) => key.startsWith(prefix)))) return;
    this.#scheduled = true;
    setImmediate(() => {
      this.#scheduled = false;
      this.#compareAll();
    });
  }

  stop(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
    this.#watchers.clear();
  }

  #poll(): void {
    try {
      if (this.#source.currentRevision() !== this.#lastRevision) this.#compareAll();
    } catch {
      // Closed or busy: the next poll reads again.
    }
  }

  #compareAll(): void {
    try {
      this.#lastRevision = this.#source.currentRevision();
    } catch {
      return;
    }
    for (const watcher of this.#watchers) {
      try {
        this.#compare(watcher);
      } catch (err) {
        watcher.onError(err instanceof Error ? err : new Error(String(err)));
      }
    }
  }

  #compare(watcher: Watcher): void {
    const entries = this.#source.list(watcher.prefix);
    const now = new Map(entries.map((entry) => [entry.key, entry.revision]));
    const events: KvWatchEvent[] = [];
    for (const key of watcher.seen.keys()) if (!now.has(key)) events.push({ type: 'delete', key });
    for (const entry of entries) if (watcher.seen.get(entry.key) !== entry.revision) events.push({ type: 'put', entry });
    watcher.seen = now;
    for (const event of events) if (this.#watchers.has(watcher)) watcher.onEvent(event);
  }
}

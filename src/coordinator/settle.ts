/**
 * Waiting for another instance's `committing` record to settle. With the early reply an
 * owner answers a commit once every store committed, before its result write lands; a
 * retry that reaches another instance in that window finds the record still `committing`.
 * Rather than `409 session_busy`, such a request waits (bounded) for the record to change,
 * then answers from what it finds: the result, as the owner did.
 * @module
 */
import type { Kv, KvWatch, KvWatchEvent } from '../kv/kv.ts';

/**
 * Resolves once the record at `key` is no longer the one at `revision` (deleted, rewritten,
 * or gone already when the watch starts), or after `timeoutMs`, whichever comes first. It
 * never rejects: the caller reads the key again and answers from what is there.
 */
export function recordChanged(kv: Kv, key: string, revision: number, timeoutMs: number): Promise<void> {
  return new Promise<void>((resolve) => {
    let done = false;
    let watch: KvWatch | undefined;
    const finish = () => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      watch?.close();
      resolve();
    };
    const timer = setTimeout(finish, timeoutMs);
    const onEvent = (event: KvWatchEvent) => {
      // The watch is on a prefix: other keys that start with this one are not ours.
      if (event.type === 'snapshot') {
        if (event.entries.find((entry) => entry.key === key)?.revision !== revision) finish();
      } else if (event.type === 'delete') {
        if (event.key === key) finish();
      } else if (event.entry.key === key && event.entry.revision !== revision) finish();
    };
    watch = kv.watch(key, onEvent);
    // The watch may report its snapshot before `watch` returns (an in-process KV).
    if (done) watch.close();
  });
}

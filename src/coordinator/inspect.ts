/**
 * What an operator reads about the coordinator beyond a session's state: the instances
 * registered in the KV, and a session's change log with secrets masked.
 * @module
 */
import type { Kv } from '../kv/kv.ts';
import { loadLog, parseRecord, parseSession, recordKeys, type ChangeLog, type InstanceRecord } from './records.ts';

/** A running commitd as its `instances/<id>` key shows it (the key lives as long as its lease). */
export interface InstanceView {
  readonly id: string;
  readonly pid: number;
  readonly startedAt: string;
  /** True for the instance answering the request. */
  readonly self: boolean;
}

/** Every instance whose lease is alive, sorted by id. */
export async function listInstances(kv: Kv, selfId: string): Promise<InstanceView[]> {
  const prefix = recordKeys.instance('');
  const entries = await kv.list(prefix, { consistency: 'serializable' });
  return entries
    .map((entry) => {
      const id = entry.key.slice(prefix.length);
      const record = parseRecord<InstanceRecord>(entry.value, ['pid', 'startedAt']);
      return { id, pid: record.pid, startedAt: record.startedAt, self: id === selfId };
    })
    .sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
}

/** Member names whose values are credentials wherever they appear in a change. */
const SECRET_NAME = /pass(word)?|secret|token|authori[sz]ation|credential|api[-_]?key|private[-_]?key/i;

/** A URL's password (`scheme://user:password@host`) replaced, the rest kept. */
function maskUserinfo(text: string): string {
  return text.replace(/(\b[a-z][a-z0-9+.-]*:\/\/[^/\s:@]*:)[^@\s/]*@/gi, '$1***@');
}

/** A copy of `value` with credential-like members and URL passwords masked as `***`. */
export function maskSecrets(value: unknown): unknown {
  if (typeof value === 'string') return maskUserinfo(value);
  if (Array.isArray(value)) return value.map(maskSecrets);
  if (typeof value === 'object' && value !== null) {
    return Object.fromEntries(Object.entries(value).map(([name, member]) => [name, SECRET_NAME.test(name) ? '***' : maskSecrets(member)]));
  }
  return value;
}

/**
 * The change log of a session still in the KV (`active` one-shots, `committing`, `failed`),
 * masked; undefined when the key has no record or its record holds no log (an interactive
 * `active` session keeps its log in the owning instance's memory until the commit point).
 */
export async function sessionLog(kv: Kv, key: string): Promise<ChangeLog | undefined> {
  const entry = await kv.get(recordKeys.session(key));
  if (!entry) return undefined;
  const record = parseSession(entry.value);
  if (!record.log && !record.logChunks) return undefined;
  return maskSecrets(await loadLog(kv, key, record)) as ChangeLog;
}

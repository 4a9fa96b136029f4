/**
 * The coordinator's records in the KV (DESIGN.md "Session lifecycle"): their keys, shapes,
 * and the change log, split into chunks when it would not fit one value.
 * @module
 */
import { randomUUID } from 'node:crypto';
import type { Kv, KvOp } from '../kv/kv.ts';

/** A session's changes by store name, each list in the order applied. */
export type ChangeLog = Record<string, unknown[]>;

/** Where a log too large for the record lives: `logs/<key>/<id>/<n>` for n < count. */
export interface LogChunks {
  readonly id: string;
  readonly count: number;
}

/** `sessions/<key>`: a session not yet finished. */
export interface SessionRecord {
  readonly state: 'active' | 'committing' | 'failed';
  readonly stores: readonly string[];
  readonly owner: string;
  readonly startedAt: string;
  /**
   * The session ID the session's changes define: a one-shot's from its first record, an
   * interactive session's from its commit point (its `active` record has none yet).
   */
  readonly sessionId?: string;
  readonly oneShot?: boolean;
  /**
   * Names this attempt of the key for participants (the \`http\` protocol's \`attempt\`): kept
   * across adoption and roll-forward, new when the key begins afresh.
   */
  readonly attempt?: string;
  /** The change log, inline when small. */
  readonly log?: ChangeLog;
  readonly logChunks?: LogChunks;
  /** Why a `failed` session failed. */
  readonly error?: string;
}

/** `results/<key>`: a committed session, kept for the retention period. */
export interface ResultRecord {
  readonly sessionId: string;
  readonly stores: Readonly<Record<string, string>>;
  readonly committedAt: string;
  /** The participants (\`http\` stores) that confirmed: their marker is this list. */
  readonly confirmed?: readonly string[];
}

/** `instances/<id>`: a running commitd, attached to its lease. */
export interface InstanceRecord {
  readonly pid: number;
  readonly startedAt: string;
  /** Which process registered: a random id per process, and where it runs (see `instance.ts` `holderOf`). */
  readonly nonce?: string;
  readonly host?: string;
  readonly bootId?: string;
  readonly processStart?: string;
}

/** KV key names of the records. Idempotency keys over HTTP never contain `/`. */
export const recordKeys = {
  session: (key: string) => `sessions/${key}`,
  sessions: 'sessions/',
  result: (key: string) => `results/${key}`,
  results: 'results/',
  /** An operator's action on a session (`history.ts`); `id` is unique. */
  audit: (key: string, id: string) => `audit/sessions/${key}/${id}`,
  auditsOf: (key: string) => `audit/sessions/${key}/`,
  audits: 'audit/sessions/',
  logChunk: (key: string, chunks: LogChunks, n: number) => `logs/${key}/${chunks.id}/${n}`,
  instance: (id: string) => `instances/${id}`,
} as const;

/** A record value larger than this moves its log into chunks; etcd's default request cap is 1.5 MiB. */
const INLINE_LOG_LIMIT = 900 * 1024;
/** Raw bytes per chunk: base64 makes it exactly 1 MiB, the per-value bound. */
const CHUNK_RAW_BYTES = 768 * 1024;

/** Parses a stored JSON record; records are ours, so a shape check of the essentials suffices. */
export function parseRecord<T extends object>(value: string, required: readonly (keyof T & string)[]): T {
  const parsed: unknown = JSON.parse(value);
  if (typeof parsed !== 'object' || parsed === null) throw new Error('record is not an object');
  for (const field of required) if (!(field in parsed)) throw new Error(`record lacks ${field}`);
  return parsed as T;
}

/** A session record from its stored JSON. */
export function parseSession(value: string): SessionRecord {
  const record = parseRecord<SessionRecord & { fingerprint?: string }>(value, ['state', 'stores', 'owner', 'startedAt']);
  // Records written before the field was named for what it holds (an active record's old
  // fingerprint hashed its store list and is no session ID).
  if (record.sessionId === undefined && record.fingerprint !== undefined && record.state !== 'active') return { ...record, sessionId: record.fingerprint };
  return record;
}
export const parseResult = (value: string) => parseRecord<ResultRecord>(value, ['sessionId', 'stores', 'committedAt']);

/**
 * Writes the log: inline when small, else as chunks created now (before the commit point
 * that references them). Returns the fields to merge into the session record.
 */
export async function storeLog(kv: Kv, key: string, log: ChangeLog): Promise<Pick<SessionRecord, 'log' | 'logChunks'>> {
  const json = JSON.stringify(log);
  if (Buffer.byteLength(json) <= INLINE_LOG_LIMIT) return { log };
  const raw = Buffer.from(json);
  const chunks: LogChunks = { id: randomUUID(), count: Math.ceil(raw.length / CHUNK_RAW_BYTES) };
  for (let n = 0; n < chunks.count; n++) {
    const part = raw.subarray(n * CHUNK_RAW_BYTES, (n + 1) * CHUNK_RAW_BYTES).toString('base64');
    await kv.create(recordKeys.logChunk(key, chunks, n), part);
  }
  return { logChunks: chunks };
}

/** Reads a record's log back, reassembling chunks. */
export async function loadLog(kv: Kv, key: string, record: SessionRecord): Promise<ChangeLog> {
  if (record.log) return record.log;
  if (!record.logChunks) return {};
  const parts: Buffer[] = [];
  for (let n = 0; n < record.logChunks.count; n++) {
    const entry = await kv.get(recordKeys.logChunk(key, record.logChunks, n));
    if (!entry) throw new Error(`log chunk ${n} of session ${key} is missing`);
    parts.push(Buffer.from(entry.value, 'base64'));
  }
  return JSON.parse(Buffer.concat(parts).toString('utf8')) as ChangeLog;
}

/** Delete operations for a record's log chunks (none for an inline log). */
export async function deleteLogOps(kv: Kv, key: string, record: SessionRecord): Promise<KvOp[]> {
  if (!record.logChunks) return [];
  const ops: KvOp[] = [];
  for (let n = 0; n < record.logChunks.count; n++) {
    const chunkKey = recordKeys.logChunk(key, record.logChunks, n);
    const entry = await kv.get(chunkKey);
    if (entry) ops.push({ type: 'delete', key: chunkKey, revision: entry.revision });
  }
  return ops;
}

/** Operations deleting a session record at `revision`, with its log chunks. */
export async function deleteSessionOps(kv: Kv, key: string, record: SessionRecord, revision: number): Promise<KvOp[]> {
  return [{ type: 'delete', key: recordKeys.session(key), revision }, ...(await deleteLogOps(kv, key, record))];
}

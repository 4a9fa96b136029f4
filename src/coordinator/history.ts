/**
 * Session history (DESIGN.md "HTTP API v1"): operators' actions on failed sessions kept as
 * audit records for the retention period, and the listing of sessions by state — open and
 * failed ones from their records, committed ones from their results, abandoned ones from
 * their audit records — newest first, a page at a time behind an opaque cursor.
 * @module
 */
import { randomUUID } from 'node:crypto';
import { DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT } from '../contract/schemas.ts';
import type { Kv, KvEntry, KvOp } from '../kv/kv.ts';
import { committedView, recordView } from './answers.ts';
import { InvalidRequestError } from './errors.ts';
import { parseRecord, parseResult, parseSession, recordKeys, type SessionRecord } from './records.ts';
import type { ListableState, SessionAudit, SessionPage, SessionView } from './types.ts';

/** `audit/sessions/<key>/<id>`: one operator action on a session, kept for the retention period. */
export interface AuditRecord {
  readonly action: 'retry' | 'abandon';
  /** The principal (token name) that sent the request. */
  readonly by: string;
  /** ISO 8601. */
  readonly at: string;
  /** The session as it was when the action was taken. */
  readonly session: SessionRecord;
}

const parseAudit = (value: string) => parseRecord<AuditRecord>(value, ['action', 'by', 'at', 'session']);

/** The operation creating the audit record of `action` on `key`'s `record`, expiring after `retentionSeconds`. */
export function auditOp(key: string, action: AuditRecord['action'], by: string, record: SessionRecord, retentionSeconds: number): KvOp {
  // The log stays out: an abandoned session is dropped with its log; the audit says who and when.
  const { log: _log, logChunks: _chunks, ...session } = record;
  const audit: AuditRecord = { action, by, at: new Date().toISOString(), session };
  return { type: 'create', key: recordKeys.audit(key, randomUUID()), value: JSON.stringify(audit), options: { ttlSeconds: retentionSeconds } };
}

/** The operator actions on `key` still retained, oldest first. */
export async function auditOf(kv: Kv, key: string): Promise<SessionAudit[]> {
  const entries = await kv.list(recordKeys.auditsOf(key), { consistency: 'serializable' });
  return entries
    .sort((x, y) => x.revision - y.revision)
    .map((entry) => {
      const { action, by, at } = parseAudit(entry.value);
      return { action, by, at };
    });
}

/** The default and the largest number of sessions one page holds. */
export const PAGE_LIMITS = { default: DEFAULT_PAGE_LIMIT, max: MAX_PAGE_LIMIT } as const;

/** Where a page ends: the last entry's revision and KV key (entries sharing a revision, one txn, order by key). */
interface Cursor {
  readonly revision: number;
  readonly key: string;
}

function encodeCursor(entry: KvEntry): string {
  return Buffer.from(JSON.stringify([entry.revision, entry.key])).toString('base64url');
}

function decodeCursor(cursor: string): Cursor {
  try {
    const parsed: unknown = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
    if (Array.isArray(parsed) && parsed.length === 2 && Number.isSafeInteger(parsed[0]) && typeof parsed[1] === 'string') {
      return { revision: parsed[0] as number, key: parsed[1] };
    }
  } catch {
    // Answered below, like any cursor this server did not give.
  }
  throw new InvalidRequestError('cursor: not a cursor commitd gave (pass nextCursor of the previous page as it came)');
}

/** Newest first: the later write first, and within one write the greater key. */
function newestFirst(x: KvEntry, y: KvEntry): number {
  return y.revision - x.revision || (x.key < y.key ? 1 : x.key > y.key ? -1 : 0);
}

function after(entry: KvEntry, cursor: Cursor): boolean {
  return entry.revision < cursor.revision || (entry.revision === cursor.revision && entry.key < cursor.key);
}

/** What a listing by `state` reads, and how each entry becomes a view (undefined: not of that state). */
function sourceOf(state: ListableState | undefined): { prefix: string; view: (entry: KvEntry) => SessionView | undefined } {
  switch (state) {
    case 'committed':
      return { prefix: recordKeys.results, view: (entry) => committedView(entry.key.slice(recordKeys.results.length), parseResult(entry.value)) };
    case 'abandoned':
      return {
        prefix: recordKeys.audits,
        view: (entry) => {
          const audit = parseAudit(entry.value);
          if (audit.action !== 'abandon') return undefined;
          const key = entry.key.slice(recordKeys.audits.length).split('/')[0] ?? '';
          return { ...recordView(key, audit.session), state: 'abandoned', abandonedBy: audit.by, abandonedAt: audit.at };
        },
      };
    default:
      return {
        prefix: recordKeys.sessions,
        view: (entry) => {
          const record = parseSession(entry.value);
          return state === undefined || record.state === state ? recordView(entry.key.slice(recordKeys.sessions.length), record) : undefined;
        },
      };
  }
}

/**
 * One page of sessions of `state` (no state: every open or failed one), newest first —
 * by the revision of the record's last write, which every instance agrees on (no clocks).
 * Reads every entry of that kind: bounded by the open sessions, or for `committed` and
 * `abandoned` by what the retention period keeps.
 */
export async function listSessions(kv: Kv, query: { state?: ListableState; limit?: number; cursor?: string }): Promise<SessionPage> {
  const limit = Math.min(query.limit ?? PAGE_LIMITS.default, PAGE_LIMITS.max);
  const cursor = query.cursor === undefined ? undefined : decodeCursor(query.cursor);
  const source = sourceOf(query.state);
  const entries = (await kv.list(source.prefix, { consistency: 'serializable' })).sort(newestFirst);
  const sessions: SessionView[] = [];
  let last: KvEntry | undefined;
  for (const entry of entries) {
    if (cursor && !after(entry, cursor)) continue;
    const view = source.view(entry);
    if (!view) continue;
    if (sessions.length === limit) return { sessions, nextCursor: last && encodeCursor(last) };
    sessions.push(view);
    last = entry;
  }
  return { sessions };
}

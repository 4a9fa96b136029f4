/**
 * Human-readable output of `commitd`: aligned plain-text tables (cli-table3 without borders
 * or colours), so it reads the same in a terminal, a log and a pipe.
 * @module
 */
import Table from 'cli-table3';
import type { SessionReply, StoreInfoReply } from '@commitd/client';

/** No borders: columns separated by two spaces, as `ps` or `kubectl get` print them. */
const PLAIN = {
  chars: {
    top: '',
    'top-mid': '',
    'top-left': '',
    'top-right': '',
    bottom: '',
    'bottom-mid': '',
    'bottom-left': '',
    'bottom-right': '',
    left: '',
    'left-mid': '',
    mid: '',
    'mid-mid': '',
    right: '',
    'right-mid': '',
    middle: '',
  },
  style: { head: [], border: [], 'padding-left': 0, 'padding-right': 2, compact: true },
};

/** Rows under a header (none when empty), columns padded to their widest cell; no trailing spaces. */
export function table(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const rendered = new Table({ ...PLAIN, ...(header.length > 0 ? { head: [...header] } : {}) });
  rendered.push(...rows.map((row) => [...row]));
  return rendered
    .toString()
    .split('\n')
    .map((line) => line.trimEnd())
    .join('\n');
}

/** Name–value pairs as two aligned columns; empty values are left out, a multi-line value stays in its column. */
export function fields(pairs: readonly (readonly [string, string | undefined])[]): string {
  const present = pairs.filter((pair): pair is readonly [string, string] => pair[1] !== undefined && pair[1] !== '');
  return table([], present);
}

function storeNames(stores: SessionReply['stores']): string {
  return (Array.isArray(stores) ? stores : Object.keys(stores)).join(',');
}

/** A member of a listed session that this client's reply type may not know yet (history fields). */
const member = (session: SessionReply, name: string): string => {
  const value = (session as Readonly<Record<string, unknown>>)[name];
  return typeof value === 'string' ? value : '';
};

/** `sessions list`: open and failed sessions by owner and start; committed ones by ID; abandoned ones by who and when. */
export function formatSessions(sessions: readonly SessionReply[], nextCursor?: string): string {
  const more = nextCursor === undefined ? '' : `\nmore: --cursor ${nextCursor}`;
  if (sessions.length === 0) return `no sessions${more}`;
  const states = new Set(sessions.map((session) => session.state as string));
  const rows =
    states.has('committed') && states.size === 1
      ? table(
          ['KEY', 'STATE', 'SESSION ID', 'COMMITTED'],
          sessions.map((session) => [session.key, session.state, session.sessionId ?? '', session.committedAt ?? '']),
        )
      : states.has('abandoned') && states.size === 1
        ? table(
            ['KEY', 'STATE', 'STORES', 'ABANDONED BY', 'ABANDONED AT'],
            sessions.map((session) => [session.key, session.state, storeNames(session.stores), member(session, 'abandonedBy'), member(session, 'abandonedAt')]),
          )
        : table(
            ['KEY', 'STATE', 'STORES', 'OWNER', 'STARTED', 'ERROR'],
            sessions.map((session) => [
              session.key,
              session.state,
              storeNames(session.stores),
              session.owner ?? '',
              session.startedAt ?? '',
              session.error ?? '',
            ]),
          );
  return `${rows}${more}`;
}

/** `sessions show`: one field per line; a committed session's store IDs one per line. */
export function formatSession(session: SessionReply): string {
  const stores = Array.isArray(session.stores) ? session.stores.join(', ') : table([], Object.entries(session.stores));
  return fields([
    ['key', session.key],
    ['state', session.state],
    ['session id', session.sessionId],
    ['stores', stores],
    ['owner', session.owner],
    ['started', session.startedAt],
    ['committed', session.committedAt],
    ['error', session.error],
  ]);
}

/** `stores list`. */
export function formatStores(stores: readonly StoreInfoReply[]): string {
  if (stores.length === 0) return 'no stores';
  return table(
    ['NAME', 'TYPE'],
    stores.map((store) => [store.name, store.type]),
  );
}

/** One session's outcome in `recover --once`. */
export interface RecoveryOutcome {
  readonly key: string;
  /** The state after the retry, or `error` when the retry itself was refused. */
  readonly result: string;
  readonly detail: string;
}

/** `recover --once`. */
export function formatRecovery(outcomes: readonly RecoveryOutcome[]): string {
  if (outcomes.length === 0) return 'no failed sessions';
  return table(
    ['KEY', 'RESULT', 'DETAIL'],
    outcomes.map((outcome) => [outcome.key, outcome.result, outcome.detail]),
  );
}

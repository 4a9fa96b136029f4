/**
 * Human-readable output of `commitd`: aligned plain-text tables, no colours, so it reads
 * the same in a terminal, a log and a pipe.
 * @module
 */
import type { SessionReply, StoreInfoReply } from '@commitd/client';

/** Rows under a header (none when empty), columns padded to their widest cell and separated by two spaces. */
export function table(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const columns = Math.max(header.length, ...rows.map((row) => row.length));
  const widths = Array.from({ length: columns }, (_, column) => Math.max((header[column] ?? '').length, ...rows.map((row) => (row[column] ?? '').length)));
  const line = (cells: readonly string[]): string =>
    cells
      .map((cell, column) => (column === cells.length - 1 ? cell : cell.padEnd(widths[column] ?? 0)))
      .join('  ')
      .trimEnd();
  return [...(header.length > 0 ? [line(header)] : []), ...rows.map(line)].join('\n');
}

/** Name–value pairs as two aligned columns; empty values are left out, a multi-line value stays in its column. */
export function fields(pairs: readonly (readonly [string, string | undefined])[]): string {
  const present = pairs.filter((pair): pair is readonly [string, string] => pair[1] !== undefined && pair[1] !== '');
  const width = Math.max(...present.map(([name]) => name.length));
  const indent = `\n${' '.repeat(width + 2)}`;
  return present.map(([name, value]) => `${name.padEnd(width)}  ${value.split('\n').join(indent)}`).join('\n');
}

function storeNames(stores: SessionReply['stores']): string {
  return (Array.isArray(stores) ? stores : Object.keys(stores)).join(',');
}

/** `sessions list`. */
export function formatSessions(sessions: readonly SessionReply[]): string {
  if (sessions.length === 0) return 'no sessions';
  return table(
    ['KEY', 'STATE', 'STORES', 'OWNER', 'STARTED', 'ERROR'],
    sessions.map((session) => [session.key, session.state, storeNames(session.stores), session.owner ?? '', session.startedAt ?? '', session.error ?? '']),
  );
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

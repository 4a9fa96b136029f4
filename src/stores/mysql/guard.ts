/**
 * What keeps a `mysql` change away from commitd's bookkeeping, limits and transaction (DESIGN
 * "The boundary", points 1 and 2). No MySQL parser runs in-process, so the guard is a lexer
 * that resolves comments, strings and quoted identifiers the way the server does under the
 * store's `sql_mode` (`ANSI_QUOTES`, `NO_BACKSLASH_ESCAPES`), a whitelist of statement kinds
 * by their first keyword, and checks on the raw text that do not depend on the lexer at all.
 * A change is refused before anything is sent, naming the rule:
 *
 * - `marker-table` (`BookkeepingError`, 400): the text — anywhere, in identifiers, strings and
 *   comments alike, case-insensitive, after Unicode compatibility folding (NFKC) — contains
 *   `commitd_sessions`. No lexing is involved, so no quoting or comment trick gets the name
 *   past it; a string that merely mentions the name is refused too (the name is commitd's).
 * - `executable-comment` (`BookkeepingError`, 400): the text contains `/*!` or `/*M!`
 *   (comments MySQL and MariaDB execute) or `/*+` (optimizer hints, which can set session
 *   variables for the statement: `SET_VAR`, `MAX_EXECUTION_TIME`) — anywhere, strings included.
 * - `statement-limit` (`BookkeepingError`, 400): a `SET` statement of any kind (session or
 *   global variables, `SET STATEMENT … FOR`, `SET TRANSACTION`, `SET NAMES`, `SET ROLE`,
 *   `SET PASSWORD`): commitd sets the connection up, a worker cannot change it.
 * - `implicit-commit` (`StatementRefusedError`, 400): a statement MySQL or MariaDB
 *   commits implicitly, which would end the session's transaction in the middle: all DDL
 *   (`CREATE`, `ALTER`, `DROP`, `RENAME`, `TRUNCATE` of anything — tables, indexes, views,
 *   triggers, routines, events, sequences, databases, users, roles, servers, tablespaces,
 *   temporary tables too), `GRANT`, `REVOKE`, `INSTALL`/`UNINSTALL`, `LOCK`/`UNLOCK`
 *   (tables, instance, `BACKUP`), `BEGIN`, `START` (transactions, replicas), `STOP`, `CHANGE`
 *   (replication), `ANALYZE`, `CHECK`, `OPTIMIZE`, `REPAIR`, `CACHE INDEX`, `LOAD INDEX`,
 *   `FLUSH`, `RESET`, `PURGE`, `BACKUP`. Schema changes belong in a migration outside commitd.
 * - `transaction-control` (`StatementRefusedError`, 400): `COMMIT`, `ROLLBACK`,
 *   `SAVEPOINT`, `RELEASE`, `XA`: commitd runs the session's transaction.
 * - `statement-kind` (`BookkeepingError`, 400): anything not on {@link ALLOWED_KINDS}
 *   (`SELECT`, `INSERT`, `UPDATE`, `DELETE`, `REPLACE`, `WITH`, `VALUES`, `TABLE`, or a
 *   parenthesised query): so no `CALL`, `DO`, `PREPARE`/`EXECUTE`/`DEALLOCATE`, `HANDLER`,
 *   `LOAD DATA`/`LOAD XML`, `KILL`, `SHOW`, `EXPLAIN`, `SHUTDOWN`, `BINLOG`, `USE`, `HELP`….
 * - `denied-function` (`BookkeepingError`, 400): `INTO OUTFILE`/`INTO DUMPFILE` (server
 *   files), or a word of {@link DENIED_WORDS}: `LOAD_FILE`, user-level locks (`GET_LOCK`,
 *   `RELEASE_LOCK`, `RELEASE_ALL_LOCKS`), which outlive the transaction on a pooled
 *   connection, and the common UDFs that run shell commands (`SYS_EXEC`, `SYS_EVAL`).
 * - one statement (`ChangeRejectedError`, 409, as in the postgres store): a `;` followed by
 *   anything but comments. The client also sends each change as one prepared statement,
 *   which the server refuses to hold two statements anyway.
 *
 * Not covered: a stored function or trigger already defined in the database by its owner
 * (not through commitd) runs SQL the guard never sees; one that writes `commitd_sessions`
 * reaches the marker table when a change fires it. Deployments should define none, or
 * grant commitd's user no EXECUTE on such routines. Writes to non-transactional tables
 * (MyISAM, Aria, MEMORY) are not rolled back by a cancel: use InnoDB.
 * @module
 */
import { BookkeepingError, ChangeRejectedError, StatementRefusedError } from '../errors.ts';

const MARKER_TABLE = 'commitd_sessions';

/** First keywords of the statements a change may run. */
const ALLOWED_KINDS = new Set(['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'REPLACE', 'WITH', 'VALUES', 'TABLE']);

/** First keywords of statements the server commits implicitly (MySQL 8 and MariaDB 10/11 manuals). */
const IMPLICIT_COMMIT = new Set([
  'CREATE',
  'ALTER',
  'DROP',
  'RENAME',
  'TRUNCATE',
  'GRANT',
  'REVOKE',
  'INSTALL',
  'UNINSTALL',
  'LOCK',
  'UNLOCK',
  'BEGIN',
  'START',
  'STOP',
  'CHANGE',
  'ANALYZE',
  'CHECK',
  'OPTIMIZE',
  'REPAIR',
  'CACHE',
  'LOAD INDEX',
  'FLUSH',
  'RESET',
  'PURGE',
  'BACKUP',
]);

const TRANSACTION_CONTROL = new Set(['COMMIT', 'ROLLBACK', 'SAVEPOINT', 'RELEASE', 'XA']);

/** Words a change may not use outside strings: functions that reach files, outlive the transaction, or run commands. */
const DENIED_WORDS = new Set(['LOAD_FILE', 'GET_LOCK', 'RELEASE_LOCK', 'RELEASE_ALL_LOCKS', 'SYS_EXEC', 'SYS_EVAL']);

/** How the server reads quotes: from the store's `sql_mode`, which a change cannot change. */
export interface SqlModeFlags {
  /** `ANSI_QUOTES`: `"…"` quotes an identifier, not a string. */
  readonly ansiQuotes: boolean;
  /** `NO_BACKSLASH_ESCAPES`: `\` is an ordinary character in strings. */
  readonly noBackslashEscapes: boolean;
}

export function sqlModeFlags(sqlMode: string): SqlModeFlags {
  const modes = new Set(sqlMode.toUpperCase().split(','));
  return { ansiQuotes: modes.has('ANSI_QUOTES') || modes.has('ANSI'), noBackslashEscapes: modes.has('NO_BACKSLASH_ESCAPES') };
}

type Token = { readonly kind: 'word'; readonly text: string } | { readonly kind: 'string' | 'quoted' | 'punct'; readonly text: string };

/** Refuses `sql` unless it keeps to the rules above; throws before anything runs. */
export function checkChange(sql: string, flags: SqlModeFlags): void {
  const folded = sql.normalize('NFKC').toLowerCase();
  if (folded.includes(MARKER_TABLE)) {
    throw new BookkeepingError('marker-table', `a change may not name ${MARKER_TABLE}: it is commitd's marker table`);
  }
  if (/\/\*(?:!|m!|\+)/.test(folded)) {
    throw new BookkeepingError('executable-comment', 'executable comments (/*! … */, /*M! … */) and optimizer hints (/*+ … */) are not allowed in a change');
  }
  const tokens = tokenize(sql, flags);
  const semicolon = tokens.findIndex((token) => token.kind === 'punct' && token.text === ';');
  if (semicolon >= 0 && semicolon < tokens.length - 1) {
    throw new ChangeRejectedError('a change is one SQL statement; send each statement as a change of its own', { reason: 'statement' });
  }
  const first = tokens[0];
  if (!first) throw new ChangeRejectedError('the change holds no SQL statement', { reason: 'syntax' });
  checkKind(first, tokens[1]);
  for (let i = 0; i < tokens.length; i++) {
    const token = tokens[i] as Token;
    if (token.kind !== 'word') continue;
    const word = token.text.toUpperCase();
    if (DENIED_WORDS.has(word)) {
      throw new BookkeepingError('denied-function', `${word} is not allowed in a change: it reaches files or commands, or outlives the transaction`);
    }
    const next = tokens[i + 1];
    if (word === 'INTO' && next?.kind === 'word' && ['OUTFILE', 'DUMPFILE'].includes(next.text.toUpperCase())) {
      throw new BookkeepingError('denied-function', `INTO ${next.text.toUpperCase()} is not allowed in a change: it writes files on the server`);
    }
  }
}

function checkKind(first: Token, second: Token | undefined): void {
  if (first.kind === 'punct' && first.text === '(') return;
  const word = first.kind === 'word' ? first.text.toUpperCase() : '';
  const two = second?.kind === 'word' ? `${word} ${second.text.toUpperCase()}` : word;
  if (word === 'SET') {
    throw new BookkeepingError('statement-limit', 'SET is not allowed in a change: commitd sets the statement limit and the session');
  }
  if (IMPLICIT_COMMIT.has(word) || IMPLICIT_COMMIT.has(two)) {
    throw new StatementRefusedError(
      'implicit-commit',
      `${two} is not allowed in a mysql session: MySQL and MariaDB commit it implicitly, which would end the session's transaction ` +
        'half-way and commit its earlier changes outside commitd; run schema changes outside commitd (a migration)',
    );
  }
  if (TRANSACTION_CONTROL.has(word)) {
    throw new StatementRefusedError('transaction-control', `${word} is not allowed in a change: commitd runs the session's transaction`);
  }
  if (!ALLOWED_KINDS.has(word)) {
    throw new BookkeepingError(
      'statement-kind',
      `${word || 'this'} statements are not allowed in a change: only SELECT, INSERT, UPDATE, DELETE, REPLACE, WITH, VALUES and TABLE`,
    );
  }
}

/**
 * The tokens of `sql` with comments and whitespace dropped: words, strings, quoted
 * identifiers and punctuation. Text the server would not accept as a whole statement
 * (an unterminated string or comment) is refused here: what was not read is not run.
 */
export function tokenize(sql: string, flags: SqlModeFlags): Token[] {
  const tokens: Token[] = [];
  let i = 0;
  const n = sql.length;
  const unterminated = (what: string) => new ChangeRejectedError(`the change has an unterminated ${what}`, { reason: 'syntax', sqlstate: '42000' });
  while (i < n) {
    const c = sql[i] as string;
    const next = sql[i + 1];
    if (/\s/.test(c)) {
      i++;
    } else if (c === '#' || (c === '-' && next === '-' && (i + 2 >= n || sql.charCodeAt(i + 2) <= 0x20))) {
      // MySQL: `-- ` needs a whitespace or control character after the dashes.
      const end = sql.indexOf('\n', i);
      i = end < 0 ? n : end + 1;
    } else if (c === '/' && next === '*') {
      const end = sql.indexOf('*/', i + 2);
      if (end < 0) throw unterminated('comment');
      i = end + 2;
    } else if (c === "'" || (c === '"' && !flags.ansiQuotes)) {
      const end = quotedEnd(sql, i, c, !flags.noBackslashEscapes);
      if (end < 0) throw unterminated('string');
      tokens.push({ kind: 'string', text: sql.slice(i, end) });
      i = end;
    } else if (c === '`' || c === '"') {
      const end = quotedEnd(sql, i, c, false);
      if (end < 0) throw unterminated('quoted identifier');
      tokens.push({ kind: 'quoted', text: sql.slice(i, end) });
      i = end;
    } else if (/[\p{L}\p{N}_$@]/u.test(c) || c.charCodeAt(0) >= 0x80) {
      let end = i + 1;
      while (end < n && (/[\p{L}\p{N}_$@.]/u.test(sql[end] as string) || sql.charCodeAt(end) >= 0x80)) end++;
      // `db.table` splits into words at the dots, as the server reads it.
      for (const part of sql.slice(i, end).split('.')) if (part) tokens.push({ kind: 'word', text: part });
      i = end;
    } else {
      tokens.push({ kind: 'punct', text: c });
      i++;
    }
  }
  return tokens;
}

/** The index just past the quoted run opened at `start`; a doubled quote is one quote; -1 when it never closes. */
function quotedEnd(sql: string, start: number, quote: string, backslashEscapes: boolean): number {
  let i = start + 1;
  while (i < sql.length) {
    const c = sql[i];
    if (backslashEscapes && c === '\\') {
      i += 2;
    } else if (c === quote) {
      if (sql[i + 1] === quote) i += 2;
      else return i + 1;
    } else {
      i++;
    }
  }
  return -1;
}

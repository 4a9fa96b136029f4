/**
 * What keeps a `postgres` change away from commitd's bookkeeping and limits (DESIGN "The
 * boundary", points 1 and 2): every change is parsed with PostgreSQL's own parser
 * (libpg-query, the server's grammar compiled to WASM) before anything is sent, and refused
 * with a `BookkeepingError` naming the rule unless
 *
 * - `marker-table`: no string anywhere in its syntax tree — a table, column, type or schema
 *   name, quoted or not, any qualification, or a string constant such as
 *   `'commitd_sessions'::regclass` — contains `commitd_sessions` (case-insensitive). So no
 *   DML, CTE, view, `INHERITS`/`LIKE`/`PARTITION OF`, `ALTER`/`DROP`/`RENAME`/`TRUNCATE`/
 *   `LOCK`, trigger or rule can name the table; a worker table whose name contains the
 *   string is refused too (the name is commitd's).
 * - `statement-limit`: it is no `SET`, `SET LOCAL`, `RESET` (`ALL`) and calls no
 *   `set_config`: the statement timeout and the role are set by commitd on the connection
 *   and cannot be changed from a change.
 * - `statement-kind`: it is one of the kinds in {@link ALLOWED_KINDS} (DML, and DDL of
 *   tables, views, indexes and sequences). Everything that runs SQL the parser never sees
 *   or that outlives the transaction is off that list: `DO`, `CALL`, `CREATE FUNCTION |
 *   PROCEDURE | TRIGGER | RULE | EVENT TRIGGER | OPERATOR | CAST`, `PREPARE`/`EXECUTE`,
 *   `COPY`, `EXPLAIN`, `DROP SCHEMA … CASCADE`, `GRANT … ON ALL TABLES`, ….
 * - `denied-function`: it calls none of {@link DENIED_FUNCTIONS}, built-in or common
 *   extension functions that run a SQL string (`query_to_xml`, `ts_stat`, `dblink`, …) or
 *   reach files, other sessions or the server's configuration. The name is matched without
 *   its schema, so `pg_catalog.query_to_xml` is refused too.
 *
 * Why a parser and a whitelist, not a role alone: the test server's user (and many
 * deployments') is a superuser, and a superuser can `RESET ROLE` or `set_config('role', …)`
 * its rights back, so a role is only as strong as the parser that refuses those. And the
 * server's parser, not a regex, decides what a statement is: comments, quoting, dollar
 * quotes and Unicode escapes are resolved the way the server resolves them.
 *
 * Not covered: a function already defined in the database (by its owner, not through
 * commitd) that runs SQL text, e.g. a plpgsql function with `EXECUTE`, can reach the marker
 * table when a change calls it; the parser cannot see into it. Deployments that define such
 * functions should revoke EXECUTE on them from commitd's user.
 *
 * A change is one statement (the extended protocol sends one anyway); several are refused.
 * @module
 */
import { parse } from 'libpg-query';
import { BookkeepingError, ChangeRejectedError } from '../errors.ts';

const MARKER_TABLE = 'commitd_sessions';

/** Statement kinds a change may run, with a check of their sub-kind where the kind alone is too broad. */
const ALLOWED_KINDS: Readonly<Record<string, (stmt: Record<string, unknown>) => boolean>> = {
  SelectStmt: () => true,
  InsertStmt: () => true,
  UpdateStmt: () => true,
  DeleteStmt: () => true,
  MergeStmt: () => true,
  CreateStmt: () => true,
  CreateTableAsStmt: () => true,
  AlterTableStmt: () => true,
  IndexStmt: () => true,
  ViewStmt: () => true,
  CreateSeqStmt: () => true,
  AlterSeqStmt: () => true,
  TruncateStmt: () => true,
  LockStmt: () => true,
  CommentStmt: () => true,
  ConstraintsSetStmt: () => true,
  NotifyStmt: () => true,
  RefreshMatViewStmt: () => true,
  DropStmt: (stmt) => ['OBJECT_TABLE', 'OBJECT_INDEX', 'OBJECT_VIEW', 'OBJECT_MATVIEW', 'OBJECT_SEQUENCE'].includes(String(stmt.removeType)),
  RenameStmt: (stmt) =>
    ['OBJECT_TABLE', 'OBJECT_COLUMN', 'OBJECT_INDEX', 'OBJECT_VIEW', 'OBJECT_MATVIEW', 'OBJECT_SEQUENCE', 'OBJECT_TABCONSTRAINT'].includes(
      String(stmt.renameType),
    ),
  // Only on named objects: `GRANT … ON ALL TABLES IN SCHEMA` would include the marker table unnamed.
  GrantStmt: (stmt) => stmt.targtype === 'ACL_TARGET_OBJECT' && ['OBJECT_TABLE', 'OBJECT_SEQUENCE'].includes(String(stmt.objtype)),
};

/**
 * Kinds that would end or escape the session's transaction: refused as before, as a rejected
 * statement (`409`), since they touch no bookkeeping.
 */
const TRANSACTION_KINDS = new Set(['TransactionStmt']);

/**
 * Functions a change may not call: those that run a SQL string the parser never sees
 * (`query_to_xml` and friends, `ts_stat`, `ts_rewrite`, tablefunc's `crosstab`/`connectby`,
 * dblink), change settings (`set_config`, reported as `statement-limit`), reach files,
 * large objects, raw pages (pageinspect), other backends or the server's configuration, or
 * take session-level advisory locks, which would outlive the session on the pooled connection.
 */
const DENIED_FUNCTIONS = new Set([
  'query_to_xml',
  'query_to_xmlschema',
  'query_to_xml_and_xmlschema',
  'cursor_to_xml',
  'cursor_to_xmlschema',
  'table_to_xml',
  'table_to_xmlschema',
  'table_to_xml_and_xmlschema',
  'schema_to_xml',
  'schema_to_xmlschema',
  'schema_to_xml_and_xmlschema',
  'database_to_xml',
  'database_to_xmlschema',
  'database_to_xml_and_xmlschema',
  'ts_stat',
  'ts_rewrite',
  'crosstab',
  'crosstab2',
  'crosstab3',
  'crosstab4',
  'connectby',
  'dblink',
  'dblink_connect',
  'dblink_connect_u',
  'dblink_exec',
  'dblink_open',
  'dblink_fetch',
  'dblink_send_query',
  'pg_read_file',
  'pg_read_binary_file',
  'pg_stat_file',
  'pg_ls_dir',
  'pg_file_write',
  'lo_import',
  'lo_export',
  'pg_terminate_backend',
  'pg_cancel_backend',
  'pg_reload_conf',
  'pg_rotate_logfile',
  'pg_promote',
  'get_raw_page',
  'pg_advisory_lock',
  'pg_advisory_lock_shared',
  'pg_try_advisory_lock',
  'pg_try_advisory_lock_shared',
  // Session-level unlocks would release commitd's in-flight lock of two-phase mode (two-phase.ts).
  'pg_advisory_unlock',
  'pg_advisory_unlock_shared',
  'pg_advisory_unlock_all',
]);

type Node = Record<string, unknown>;

const isNode = (value: unknown): value is Node => typeof value === 'object' && value !== null && !Array.isArray(value);

/** Refuses `sql` unless it is one statement that keeps to the rules above; throws before anything runs. */
export async function checkChange(sql: string): Promise<void> {
  let stmts: unknown[];
  try {
    stmts = (await parse(sql)).stmts ?? [];
  } catch (err) {
    // Never run what was not checked: a statement the parser refuses is refused here.
    const message = err instanceof Error ? err.message : String(err);
    throw new ChangeRejectedError(`postgres could not parse the change: ${message}`, { reason: 'syntax', sqlstate: '42601', message });
  }
  if (stmts.length > 1) {
    throw new ChangeRejectedError('a change is one SQL statement; send each statement as a change of its own', {
      reason: 'statement',
      sqlstate: '42601',
    });
  }
  for (const raw of stmts) checkStatement(isNode(raw) && isNode(raw.stmt) ? raw.stmt : {});
}

function checkStatement(stmt: Node): void {
  const kind = Object.keys(stmt)[0] ?? '';
  const body = isNode(stmt[kind]) ? (stmt[kind] as Node) : {};
  walk(stmt);
  if (kind === 'VariableSetStmt') {
    throw new BookkeepingError('statement-limit', 'SET and RESET are not allowed in a change: commitd sets the statement limit and the role');
  }
  if (TRANSACTION_KINDS.has(kind)) {
    throw new ChangeRejectedError("transaction control is not allowed in a change: commitd runs the session's transaction", {
      reason: 'statement',
      kind,
    });
  }
  const allowed = ALLOWED_KINDS[kind];
  if (!allowed?.(body)) {
    throw new BookkeepingError(
      'statement-kind',
      `${kind.replace(/Stmt$/, '') || 'this'} statements are not allowed in a change: only DML and DDL of tables, views, indexes and sequences`,
    );
  }
}

/** Refuses any string naming the marker table and any call of a denied function, anywhere in the tree. */
function walk(value: unknown): void {
  if (typeof value === 'string') {
    if (value.toLowerCase().includes(MARKER_TABLE)) {
      throw new BookkeepingError('marker-table', `a change may not name ${MARKER_TABLE}: it is commitd's marker table`);
    }
    return;
  }
  if (Array.isArray(value)) {
    for (const item of value) walk(item);
    return;
  }
  if (!isNode(value)) return;
  if (isNode(value.FuncCall)) checkCall(value.FuncCall);
  for (const child of Object.values(value)) walk(child);
}

function checkCall(call: Node): void {
  const names = Array.isArray(call.funcname) ? call.funcname : [];
  const last = names[names.length - 1];
  const name = isNode(last) && isNode(last.String) ? String(last.String.sval).toLowerCase() : '';
  if (name === 'set_config') {
    throw new BookkeepingError('statement-limit', 'set_config is not allowed in a change: commitd sets the statement limit and the role');
  }
  if (DENIED_FUNCTIONS.has(name)) {
    throw new BookkeepingError('denied-function', `${name} is not allowed in a change: it runs SQL text, or reaches outside the transaction or the session`);
  }
}

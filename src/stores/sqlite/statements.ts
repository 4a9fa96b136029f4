/**
 * The changes of a `sqlite` store as statements: which statements a change may run, how its
 * JSON parameters bind, and the cache of compiled statements that lets a bad change fail at
 * apply rather than at commit.
 * @module
 */
import Database from 'better-sqlite3';
import { LRUCache } from 'lru-cache';
import { CommitdError, errorMessage } from '../../errors/core.ts';
import { BookkeepingError, ChangeRejectedError, StatementTimeoutError } from '../errors.ts';
import type { ConnectionGuard } from './guard.ts';

/** One change: a single SQL statement with positional (array) or named (object) parameters. */
export interface SqliteChange {
  readonly sql: string;
  readonly params?: unknown[] | Record<string, unknown>;
}

/** A change compiled and checked at apply, ready to run at prepare. */
export interface CheckedChange {
  /**
   * Compiled at apply; absent when the change may name what an earlier change of the same
   * session creates (a table, a column): compiled at prepare, after those ran.
   */
  readonly statement: Database.Statement | undefined;
  readonly change: SqliteChange;
  readonly params: unknown[];
  /** It changes the schema (CREATE, ALTER, DROP): later changes of the session may depend on it. */
  readonly changesSchema: boolean;
  /** It creates a view or a trigger: what they read is checked once they exist (see {@link StatementCache.probeSchema}). */
  readonly createsCode: boolean;
}

/** A statement that creates a view or trigger, whose body SQLite compiles only where it is used. */
const CREATES_CODE = /^CREATE\s+(?:TEMP\s+|TEMPORARY\s+)?(?:VIEW|TRIGGER)\b/i;

/** Statements that change the schema. */
const SCHEMA_VERBS = new Set(['CREATE', 'ALTER', 'DROP']);

/** Whitespace and comments before a statement's first keyword. */
const LEADING_TRIVIA = /^(?:\s+|--[^\n]*(?:\n|$)|\/\*[\s\S]*?(?:\*\/|$))*/;

function createsCode(sql: string): boolean {
  return CREATES_CODE.test(sql.replace(LEADING_TRIVIA, ''));
}

/**
 * Compiled statements kept per database, by SQL text. A statement compiled per change would
 * live until V8 finalises its wrapper, and V8 does not see its native size: RSS crept.
 */
const STATEMENT_CACHE_SIZE = 256;

/**
 * Statements a change may start with: those that read or write data, and DDL (transactional
 * in SQLite). Everything else — BEGIN, COMMIT, END, ROLLBACK, SAVEPOINT, RELEASE, ATTACH,
 * DETACH, VACUUM, PRAGMA, … — would break the one transaction commitd runs, or escape it.
 */
const ALLOWED_VERBS = new Set(['SELECT', 'VALUES', 'WITH', 'INSERT', 'REPLACE', 'UPDATE', 'DELETE', 'CREATE', 'DROP', 'ALTER']);

function verbNotAllowed(verb: string): ChangeRejectedError {
  return new ChangeRejectedError(`${verb || 'this'} statements are not allowed: a change must read or write data (commitd runs the transaction)`, {
    reason: 'statement',
    verb,
  });
}

/** A SQLite error code (`SQLITE_BUSY`, `SQLITE_CONSTRAINT_PRIMARYKEY`, …), if `err` has one. */
export function sqliteCode(err: unknown): string | undefined {
  return err instanceof Database.SqliteError ? err.code : undefined;
}

/** The first keyword of a statement, past whitespace and comments. */
function leadingVerb(sql: string): string {
  const rest = sql.replace(LEADING_TRIVIA, '');
  return /^[A-Za-z]+/.exec(rest)?.[0].toUpperCase() ?? '';
}

/**
 * A JSON scalar as SQLite binds it. Booleans become 1/0 (SQLite has no boolean type; its own
 * TRUE/FALSE are 1/0). Integral numbers bind as INTEGER, not REAL: JSON does not tell 5 from
 * 5.0, SQL does, and a REAL 5.0 in an untyped column would surprise.
 */
function bindable(value: unknown, where: string): string | number | bigint | null {
  if (typeof value === 'boolean') return value ? 1n : 0n;
  if (typeof value === 'number') return Number.isSafeInteger(value) ? BigInt(value) : value;
  if (typeof value === 'string' || value === null) return value;
  throw new ChangeRejectedError(`parameter ${where} must be a string, number, boolean or null`, { reason: 'params' });
}

function bindableParams(params: SqliteChange['params']): unknown[] {
  if (params === undefined) return [];
  if (Array.isArray(params)) return params.map((value, i) => bindable(value, `[${i}]`));
  const named: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(params)) named[name] = bindable(value, JSON.stringify(name));
  return [named];
}

/** Compiles changes on a database's writer connection and remembers what it compiled. */
export class StatementCache {
  readonly #writer: Database.Database;
  readonly #guard: ConnectionGuard;
  /** Compiled on the writer, never bound: parameters are passed to each `run`. */
  readonly #statements = new LRUCache<string, Database.Statement>({ max: STATEMENT_CACHE_SIZE });
  /** Whether a parameter shape fits a statement, by SQL text and shape: an error message, or '' if it fits. */
  readonly #shapes = new LRUCache<string, string>({ max: STATEMENT_CACHE_SIZE * 4 });

  constructor(writer: Database.Database, guard: ConnectionGuard) {
    this.#writer = writer;
    this.#guard = guard;
  }

  /**
   * Compiles the statement (or finds it compiled) and checks its parameters now, so a bad
   * statement fails at apply, not at commit. After a schema change earlier in the same
   * session (`afterSchemaChange`), a statement that does not compile against today's schema
   * may compile once that change ran: it is kept and compiled at prepare instead.
   * @throws ChangeRejectedError — the statement does not compile, is not allowed, or its parameters do not fit.
   * @throws BookkeepingError — it reaches commitd's bookkeeping (the guard refused it).
   */
  check(change: SqliteChange, afterSchemaChange = false): CheckedChange {
    const verb = leadingVerb(change.sql);
    const changesSchema = SCHEMA_VERBS.has(verb);
    let statement: Database.Statement;
    try {
      statement = this.#statement(change.sql);
    } catch (err) {
      // Transaction statements, PRAGMA, ATTACH: the guard refuses them too, the verb says why.
      if (err instanceof BookkeepingError) throw ALLOWED_VERBS.has(verb) ? err : verbNotAllowed(verb);
      if (afterSchemaChange && ALLOWED_VERBS.has(verb) && sqliteCode(err) === 'SQLITE_ERROR') {
        return { statement: undefined, change, params: bindableParams(change.params), changesSchema, createsCode: createsCode(change.sql) };
      }
      throw new ChangeRejectedError(`statement does not compile: ${errorMessage(err)}`, {
        ...(sqliteCode(err) ? { code: sqliteCode(err) } : { reason: 'statement' }),
        message: errorMessage(err),
      });
    }
    if (!ALLOWED_VERBS.has(verb)) throw verbNotAllowed(verb);
    const params = bindableParams(change.params);
    const mismatch = this.#paramsMismatch(change.sql, params);
    if (mismatch !== undefined) {
      throw new ChangeRejectedError(`parameters do not fit the statement: ${mismatch}`, { reason: 'params', message: mismatch });
    }
    return { statement, change, params, changesSchema, createsCode: createsCode(change.sql) };
  }

  /**
   * Runs the `index`th change of a session (inside its savepoint) under the guard and the
   * statement limit. A view or trigger it creates is then compiled where it would be used,
   * so one that reaches the bookkeeping is refused now, not at its first use.
   * @throws ChangeRejectedError — SQLite refused it (a constraint, a table gone since apply).
   * @throws StatementTimeoutError — it ran past the store's limit.
   * @throws BookkeepingError — it, or a view or trigger it created, reaches the bookkeeping.
   */
  run(checked: CheckedChange, index: number): void {
    try {
      const { statement, params } = checked.statement ? checked : this.check(checked.change);
      this.#guard.run(() => (statement as Database.Statement).run(...params));
      if (checked.createsCode) this.probeSchema();
    } catch (err) {
      if (err instanceof StatementTimeoutError) throw new StatementTimeoutError(this.#guard.limitMs, { change: index }, { cause: err });
      if (err instanceof ChangeRejectedError)
        throw new ChangeRejectedError(`changes[${index}]: ${err.message}`, { ...err.detail, change: index }, { cause: err });
      if (err instanceof CommitdError) throw err;
      throw new ChangeRejectedError(
        `changes[${index}] failed: ${errorMessage(err)}`,
        {
          ...(sqliteCode(err) ? { code: sqliteCode(err) } : {}),
          message: errorMessage(err),
          change: index,
        },
        { cause: err },
      );
    }
  }

  /**
   * Compiles, with the guard on, what uses every view and trigger of the schema: a SELECT
   * from each view, and a DELETE, an INSERT and an UPDATE of every column of each table or
   * view a trigger is on. Compiling runs nothing. A refusal is a BookkeepingError; other
   * compile errors (an INSERT into a view without an INSTEAD OF trigger) say nothing here.
   */
  probeSchema(): void {
    const objects = this.#writer.prepare("SELECT type, name, tbl_name AS target FROM main.sqlite_schema WHERE type IN ('view', 'trigger')").all() as {
      type: string;
      name: string;
      target: string;
    }[];
    const quote = (name: string) => `"${name.replace(/"/g, '""')}"`;
    const probes: string[] = [];
    for (const { type, name, target } of objects) {
      if (type === 'view') probes.push(`SELECT * FROM main.${quote(name)}`);
      if (type !== 'trigger') continue;
      const columns = (this.#writer.prepare('SELECT name FROM pragma_table_xinfo(?)').all(target) as { name: string }[]).map((c) => quote(c.name));
      probes.push(`DELETE FROM main.${quote(target)}`, `INSERT INTO main.${quote(target)} DEFAULT VALUES`);
      if (columns.length > 0) probes.push(`UPDATE main.${quote(target)} SET ${columns.map((c) => `${c} = ${c}`).join(', ')}`);
    }
    for (const sql of probes) {
      try {
        this.#guard.compile(() => this.#writer.prepare(sql));
      } catch (err) {
        if (err instanceof BookkeepingError) throw err;
      }
    }
  }

  /**
   * The compiled statement for `sql`, from the cache. Compiling on the shared writer is safe
   * while a session holds its transaction: it executes nothing.
   */
  #statement(sql: string): Database.Statement {
    let statement = this.#statements.get(sql);
    if (!statement) {
      statement = this.#guard.compile(() => this.#writer.prepare(sql));
      this.#statements.set(sql, statement);
    }
    return statement;
  }

  /**
   * Checks that parameters of this shape (how many positional ones, which named ones) bind
   * to `sql`, without executing it: binds a throwaway compilation once per shape and caches
   * the verdict, so a mismatch fails at apply rather than at commit.
   * @returns an error message, or undefined if they fit
   */
  #paramsMismatch(sql: string, params: readonly unknown[]): string | undefined {
    const named = params[0] !== null && typeof params[0] === 'object';
    const names = named
      ? `${Object.keys(params[0] as object)
          .sort()
          .join('\0')}\0named`
      : String(params.length);
    const shape = `${sql}\0${names}`;
    let verdict = this.#shapes.get(shape);
    if (verdict === undefined) {
      try {
        this.#guard.compile(() => this.#writer.prepare(sql).bind(...params));
        verdict = '';
      } catch (err) {
        if (err instanceof BookkeepingError) throw err;
        verdict = errorMessage(err);
      }
      this.#shapes.set(shape, verdict);
    }
    return verdict || undefined;
  }
}

/**
 * The guard on a `sqlite` store's writer connection: commitd's SQLite extension
 * (`native/sqlite-guard.c`), which refuses, when SQLite compiles a worker's statement,
 * anything that reaches commitd's bookkeeping, and aborts a worker's statement at the
 * store's time limit. This module loads it and runs a worker's steps under it.
 * @module
 */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type Database from 'better-sqlite3';
import { BookkeepingError, StatementTimeoutError } from '../errors.ts';

/**
 * Built by `npm ci` / `npm run build:native` (scripts/build-native.mjs); SQLite finds its entry point, `sqlite3_sqliteguard_init`, by the file's name.
 * This module runs from src/stores/sqlite/ or bundled into native/build/, beside the extension (scripts/build-sqlite-thread.ts).
 */
const EXTENSION = fileURLToPath(new URL(import.meta.url.endsWith('.ts') ? '../../../native/build/sqlite-guard.so' : './sqlite-guard.so', import.meta.url));

/** What each rule of the extension's authorizer protects, for the worker's error message. */
const RULES: Readonly<Record<string, string>> = {
  'marker-table':
    "commitd's marker table commitd_sessions is commitd's own: a change may not read, write, alter, index, drop, shadow or attach triggers to it (also through a view or trigger)",
  'connection-object': 'TEMP tables, views, triggers and virtual tables would outlive the session on the store connection every session shares',
  attach: 'a change may not ATTACH or DETACH databases',
  pragma: 'a change may not run PRAGMAs (commitd sets the connection up)',
  transaction: 'a change may not begin, end or roll back transactions or savepoints (commitd runs the transaction)',
  function: "a change may not call load_extension or commitd's own functions",
};

export class ConnectionGuard {
  readonly #switch: Database.Statement<[string, number, number], { outcome: string | null }>;
  readonly #secret: string;
  readonly #limitMs: number;

  private constructor(db: Database.Database, limitMs: number) {
    if (!existsSync(EXTENSION)) {
      throw new Error(`commitd's SQLite guard is not built (${EXTENSION}): run \`npm run build:native\` (needs a C compiler)`);
    }
    db.loadExtension(EXTENSION);
    // Taken before any worker's statement can run: the extension hands it out once.
    this.#secret = (db.prepare('SELECT commitd_secret() AS secret').get() as { secret: string }).secret;
    this.#switch = db.prepare('SELECT commitd_guard(?, ?, ?) AS outcome');
    this.#limitMs = limitMs;
  }

  /** Loads the guard on `db`; worker statements run at most `limitMs`. */
  static install(db: Database.Database, limitMs: number): ConnectionGuard {
    return new ConnectionGuard(db, limitMs);
  }

  /** The statement limit, in milliseconds. */
  get limitMs(): number {
    return this.#limitMs;
  }

  /**
   * Compiles a worker's statement with the guard on (no time limit: compiling is bounded).
   * @throws BookkeepingError — the statement reaches what the guard protects.
   */
  compile<T>(step: () => T): T {
    return this.#guarded(0, step);
  }

  /**
   * Runs a worker's statement with the guard on and the time limit armed.
   * @throws BookkeepingError — the statement reaches what the guard protects (a schema change recompiled it).
   * @throws StatementTimeoutError — it ran past the limit and was aborted.
   */
  run<T>(step: () => T): T {
    return this.#guarded(this.#limitMs, step);
  }

  #guarded<T>(limitMs: number, step: () => T): T {
    this.#switch.get(this.#secret, 1, limitMs);
    let result: T;
    try {
      result = step();
    } catch (err) {
      const outcome = this.#off();
      if (outcome === 'interrupted') throw new StatementTimeoutError(this.#limitMs, {}, { cause: err });
      // A refusal fails the statement that caused it: the rule is why it failed.
      if (outcome) throw new BookkeepingError(outcome, RULES[outcome] ?? `refused by rule ${outcome}`);
      throw err;
    }
    this.#off();
    return result;
  }

  /**
   * Guard off, limit disarmed; what happened while it was on. The watchdog may fire while
   * this very call runs (the step ended just at the limit): it disarms itself when it
   * fires, so the second call goes through.
   */
  #off(): string | null {
    try {
      return this.#switch.get(this.#secret, 0, 0)?.outcome ?? null;
    } catch (err) {
      if ((err as { code?: unknown })?.code !== 'SQLITE_INTERRUPT') throw err;
      this.#switch.get(this.#secret, 0, 0);
      return 'interrupted';
    }
  }
}

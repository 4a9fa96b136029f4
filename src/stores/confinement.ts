/**
 * Where a runtime-registered sqlite store may live (DESIGN "The boundary", point 7): its
 * path resolves against the data dir and must stay, symlinks resolved, inside the data dir
 * or a `storeRoots` folder; it must not be the coordinator KV's file (or its journal),
 * commitd's own files, or another store's file; and an existing file must be a SQLite
 * database. Nothing is created while checking. A path outside gets one message whether or
 * not something exists there.
 * @module
 */
import { closeSync, lstatSync, openSync, readSync, realpathSync, statSync } from 'node:fs';
import { basename, dirname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import { CommitdError } from '../errors/core.ts';

/** The first 16 bytes of every SQLite database file. */
const SQLITE_HEADER = Buffer.from('SQLite format 3\0', 'latin1');
/** Files SQLite keeps beside a database. */
const COMPANIONS = ['', '-wal', '-shm', '-journal'];

/** A registration's sqlite path is refused; the message names the rule, never what exists outside. */
export class ConfinedPathError extends CommitdError {
  constructor(message: string) {
    super('INVALID_REQUEST', `options.path: ${message}`);
  }
}

/** Where runtime stores may live and what they may not be. */
export interface Confinement {
  readonly dataDir: string;
  /** Further folders (absolute) a runtime sqlite store may live in. */
  readonly storeRoots: readonly string[];
  /** Files no store may use: the coordinator KV's, the instance id file. */
  readonly reserved: readonly string[];
}

/**
 * The absolute, symlink-free path a runtime sqlite store at `given` opens, or
 * `ConfinedPathError`. `otherStores` are the files of the other sqlite stores.
 */
export function confineSqlitePath(given: string, confinement: Confinement, otherStores: readonly string[]): string {
  if (given.split(/[\\/]/).includes('..')) throw new ConfinedPathError('must not contain ".." segments');
  const roots = [confinement.dataDir, ...confinement.storeRoots].map(realOrResolved).filter((root) => root !== undefined);
  const path = realOrResolved(isAbsolute(given) ? given : resolve(confinement.dataDir, given));
  if (path === undefined || !roots.some((root) => isInside(root, path))) throw new ConfinedPathError('must be inside the data dir or a storeRoots folder');
  for (const reserved of confinement.reserved.map((file) => realOrResolved(file) ?? resolve(file))) {
    if (COMPANIONS.some((suffix) => path === reserved + suffix)) throw new ConfinedPathError("is one of commitd's own files");
  }
  for (const other of otherStores.map((file) => realOrResolved(file) ?? resolve(file))) {
    if (COMPANIONS.some((suffix) => path === other + suffix || other === path + suffix)) throw new ConfinedPathError("is another store's file");
  }
  assertSqliteOrAbsent(path);
  return path;
}

/** True when `path` lies strictly below `root`. */
function isInside(root: string, path: string): boolean {
  const rel = relative(root, path);
  return rel !== '' && !rel.startsWith(`..${sep}`) && rel !== '..' && !isAbsolute(rel);
}

/**
 * `path` with every symlink resolved: the longest existing ancestor through `realpath`, the
 * rest appended (a part that does not exist cannot hold a symlink). Undefined when that
 * cannot be known — a dangling symlink (opening it would create its target, wherever that
 * is), a folder that cannot be read — which callers treat as outside.
 */
export function realOrResolved(path: string): string | undefined {
  const absolute = resolve(path);
  const missing: string[] = [];
  for (let at = absolute; ; at = dirname(at)) {
    try {
      return join(realpathSync(at), ...missing.reverse());
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' && code !== 'ENOTDIR') return undefined;
      if (isSymlink(at)) return undefined;
      if (dirname(at) === at) return absolute;
      missing.push(basename(at));
    }
  }
}

function isSymlink(path: string): boolean {
  try {
    return lstatSync(path).isSymbolicLink();
  } catch {
    return false;
  }
}

/** Refuses an existing file that is not a SQLite database (an empty file included). */
function assertSqliteOrAbsent(path: string): void {
  let size: number;
  try {
    const stat = statSync(path);
    if (!stat.isFile()) throw new ConfinedPathError('exists and is not a SQLite database');
    size = stat.size;
  } catch (err) {
    if (err instanceof ConfinedPathError) throw err;
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw new ConfinedPathError('cannot be checked');
  }
  const header = Buffer.alloc(SQLITE_HEADER.length);
  let read = 0;
  if (size >= header.length) {
    const fd = openSync(path, 'r');
    try {
      read = readSync(fd, header, 0, header.length, 0);
    } finally {
      closeSync(fd);
    }
  }
  if (read < header.length || !header.equals(SQLITE_HEADER)) throw new ConfinedPathError('exists and is not a SQLite database');
}

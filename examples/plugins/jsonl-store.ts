/**
 * An example store-type plugin: `jsonl`. Each committed session becomes one JSON-lines file
 * under `dir`: a marker line, then the session's records. Copy it to write your own.
 *
 * Config:  {"plugins": ["./examples/plugins/jsonl-store.ts"],
 *           "stores": [{"name": "audit", "type": "jsonl", "options": {"dir": "./data/audit"}}]}
 * Change:  {"record": {"event": "order-placed", "id": 42}}
 *
 * The rules every store type follows, and how this one meets them:
 * - Data and marker commit atomically: both live in one file that appears in one step.
 * - A second committer of the same key must fail or skip, never write twice: the file
 *   appears with `link`, which refuses to replace an existing file.
 * - Nothing is locked while the client is still sending changes: records wait in memory.
 * - Its bookkeeping (the marker line) is out of the worker's reach: a record shaped like a
 *   marker line (a top-level `commitd` member) is refused at apply with `BookkeepingError`.
 * @module
 */
import { createHash, randomUUID } from 'node:crypto';
import { link, mkdir, open, readFile, unlink } from 'node:fs/promises';
import { join, resolve } from 'node:path';
// The whole plugin API, by package name: here Node resolves commitd's own `exports`, and a
// plugin outside this repository gets the same module from the installed package.
import {
  BookkeepingError,
  describeKey,
  fromHex,
  HelperCommittable,
  MarkerExistsError,
  toHex,
  type Store,
  type StoreContext,
  type StoreDriver,
  type StoreType,
} from 'commitd/plugin';

interface JsonlOptions {
  readonly dir: string;
}

interface JsonlChange {
  readonly record: Record<string, unknown>;
}

/** The first line of every file: which key it commits, under which store ID. */
interface MarkerLine {
  readonly commitd: { readonly key: string; readonly sessionId: string };
}

/**
 * The file of a key. Keys may be long and may differ only in letter case, which some
 * filesystems ignore, so the name is a hash of the key; the key itself goes inside.
 */
function fileFor(dir: string, key: Uint8Array): string {
  return join(dir, `${createHash('sha256').update(key).digest('hex')}.jsonl`);
}

/** The ID stored in the key's file, or undefined when the key was not committed here. */
async function readMarker(file: string): Promise<Uint8Array | undefined> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  const marker = JSON.parse(text.slice(0, text.indexOf('\n'))) as MarkerLine;
  return fromHex(marker.commitd.sessionId);
}

/** Writes and flushes a whole file: a crash leaves it complete or as a stray temp file. */
async function writeDurably(path: string, text: string): Promise<void> {
  const handle = await open(path, 'wx');
  try {
    await handle.writeFile(text);
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Flushes a directory, so that a file just linked into it survives a power cut. */
async function syncDir(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** What this type keeps for itself; declared as `bookkeeping`, refused in `apply`. */
const BOOKKEEPING = 'the first line of each file, {"commitd": {"key", "sessionId"}}, is the marker';

/** One session. The helper around it hashes the changes and handles skip mode. */
class JsonlDriver implements StoreDriver<JsonlChange> {
  #records: JsonlChange['record'][] = [];
  /** The prepared temp file, until commit links it into place or rollback deletes it. */
  #temp: string | undefined;

  constructor(private readonly dir: string) {}

  async findMarker(key: Uint8Array): Promise<Uint8Array | undefined> {
    return readMarker(fileFor(this.dir, key));
  }

  async open(): Promise<void> {
    this.#records = [];
  }

  async apply(change: JsonlChange): Promise<void> {
    // commitd validated the shape against changeSchema already. What the schema does not say:
    // a record must not look like a marker line, which belongs to commitd (`bookkeeping`).
    if (Object.hasOwn(change.record, 'commitd')) {
      throw new BookkeepingError('marker-line', `a jsonl record may not have a top-level "commitd" member: ${BOOKKEEPING}`);
    }
    this.#records.push(change.record);
  }

  /** Writes everything to a temp file now, so a full disk fails before the commit point. */
  async prepare(key: Uint8Array, id: Uint8Array): Promise<void> {
    const marker: MarkerLine = { commitd: { key: describeKey(key), sessionId: toHex(id) } };
    const lines = [marker, ...this.#records].map((line) => `${JSON.stringify(line)}\n`);
    this.#temp = join(this.dir, `.${randomUUID()}.tmp`);
    await writeDurably(this.#temp, lines.join(''));
  }

  /**
   * Makes the file appear under its key's name, atomically. `rename` would do that too,
   * but it silently replaces an existing file: two committers of one key would both
   * "win". `link` fails with EEXIST instead, which is exactly the marker check we need.
   */
  async commit(key: Uint8Array, id: Uint8Array): Promise<void> {
    if (!this.#temp) await this.prepare(key, id);
    const file = fileFor(this.dir, key);
    try {
      await link(this.#temp as string, file);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      // Someone committed this key first. The helper compares IDs: same changes → skip.
      const stored = await readMarker(file);
      if (!stored) throw err;
      throw new MarkerExistsError(key, stored);
    }
    await syncDir(this.dir);
    await this.rollback(); // only removes the temp name; the data lives on under `file`
  }

  async rollback(): Promise<void> {
    const temp = this.#temp;
    this.#temp = undefined;
    this.#records = [];
    // A temp file left by a crash is harmless: it never becomes a marker. Delete at leisure.
    if (temp) await unlink(temp).catch(() => undefined);
  }
}

/** The plugin: commitd checks this shape when it loads the module. */
const jsonlStoreType: StoreType<JsonlOptions, JsonlChange> = {
  type: 'jsonl',
  bookkeeping: BOOKKEEPING,
  // Plain JSON Schemas: commitd validates options before create and each change before apply.
  optionsSchema: {
    type: 'object',
    properties: { dir: { type: 'string', minLength: 1 } },
    required: ['dir'],
    additionalProperties: false,
  },
  changeSchema: {
    type: 'object',
    properties: { record: { type: 'object' } },
    required: ['record'],
    additionalProperties: false,
  },
  async create(options: JsonlOptions, ctx: StoreContext): Promise<Store<JsonlChange>> {
    const dir = resolve(options.dir);
    await mkdir(dir, { recursive: true });
    return {
      name: ctx.name,
      type: 'jsonl',
      session: () => new HelperCommittable(ctx.name, new JsonlDriver(dir)),
      // Nothing long-lived to release: every session opens and closes its own files.
      close: async () => {},
    };
  },
};

export default jsonlStoreType;

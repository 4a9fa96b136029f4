/**
 * The store catalog (DESIGN "Store catalog"): the stores of the config file plus those
 * registered at runtime, which live in the coordinator KV at `catalog/<name>` — created
 * with create-if-absent, removed with compare-revision, watched by every instance. A
 * watch-backed cache opens and closes this instance's stores as entries come and go (the
 * watch re-lists after it was lost), and keeps trying a store that cannot be opened here,
 * which shows as `down` meanwhile. Removals leave an audit record (`audit/stores/…`) for the
 * retention period.
 * @module
 */
import { randomUUID } from 'node:crypto';
import { resolve } from 'node:path';
import type { Logger } from 'pino';
import { CommitdError, errorMessage } from '../errors/core.ts';
import type { Kv, KvWatch, KvWatchEvent } from '../kv/kv.ts';
import { AlreadyExistsError, ConstraintViolatedError } from '../kv/errors.ts';
import type { Store } from './api.ts';
import { confineSqlitePath, type Confinement } from './confinement.ts';
import { findLiteralSecret, LiteralSecretError, redactOptions, resolveEnvRefs } from './options.ts';
import { InvalidStoreError, StoreOpenError, type RegistryContext, type StoreDefinition, type StoreRegistry } from './registry.ts';

/** Where a store's definition comes from. */
export type StoreOrigin = 'config' | 'runtime';

/** `catalog/<name>`: a runtime-registered store, its options as given (never a secret). */
export interface CatalogRecord {
  readonly name: string;
  readonly type: string;
  readonly options: unknown;
  readonly registeredBy: string;
  readonly registeredAt: string;
}

/** `audit/stores/<at>-<id>`: a store removal, kept for the retention period. */
export interface StoreAuditRecord {
  readonly action: 'removed';
  readonly name: string;
  readonly type: string;
  readonly by: string;
  readonly at: string;
}

/** A catalogued store as this instance sees it. */
export interface CatalogStoreInfo {
  readonly name: string;
  readonly type: string;
  readonly origin: StoreOrigin;
  /** As given: `{"env": …}` values shown as such, credentials redacted. */
  readonly options: unknown;
  readonly registeredBy?: string;
  readonly registeredAt?: string;
  /** `open` here, or `down`: it could not be opened here yet (`error` says why; retried). */
  readonly status: 'open' | 'down';
  readonly error?: string;
}

/** One store's answer to a readiness probe. */
export interface StoreHealth {
  readonly name: string;
  readonly status: 'up' | 'down';
  readonly error?: string;
}

/** A removal or lookup names a store the catalog does not hold. */
export class StoreNotCataloguedError extends CommitdError {
  constructor(name: string) {
    super('NOT_FOUND', `there is no store named ${JSON.stringify(name)}`);
  }
}

/** The store's entry changed between reading and removing it. */
export class CatalogRaceError extends CommitdError {
  constructor(name: string) {
    super('CONSTRAINT_VIOLATED', `store ${JSON.stringify(name)} changed while it was being removed (registered again?); read the catalog again`);
  }
}

export const catalogKeys = {
  entries: 'catalog/',
  entry: (name: string) => `catalog/${name}`,
  audit: 'audit/stores/',
  auditRecord: (at: string) => `audit/stores/${at}-${randomUUID().slice(0, 8)}`,
} as const;

export interface CatalogOptions {
  readonly kv: Kv;
  readonly registry: StoreRegistry;
  readonly context: (name: string) => RegistryContext;
  readonly logger: Logger;
  readonly configStores: readonly StoreDefinition[];
  readonly confinement: Confinement;
  readonly retentionSeconds: number;
  readonly env?: NodeJS.ProcessEnv;
  /** Bound of a store's reachability probe at registration and start, in ms (default 3000). */
  readonly probeTimeoutMs?: number;
  /** How long after a failed open the store is tried again, in ms (default 5000). */
  readonly retryMs?: number;
}

interface Entry {
  readonly record: CatalogRecord;
  readonly revision: number;
}

interface Wanted {
  readonly definition: StoreDefinition;
  readonly origin: StoreOrigin;
  readonly revision?: number;
}

interface Opened {
  readonly origin: StoreOrigin;
  readonly revision?: number;
}

/** How long a readiness answer is reused, in ms: a load balancer's probes do not fan out to every store. */
const HEALTH_CACHE_MS = 1000;

export class StoreCatalog {
  readonly #o: CatalogOptions;
  readonly #config: ReadonlyMap<string, StoreDefinition>;
  readonly #entries = new Map<string, Entry>();
  readonly #opened = new Map<string, Opened>();
  readonly #down = new Map<string, string>();
  readonly #retries = new Map<string, NodeJS.Timeout>();
  /** Per name, the reconciliation running (one at a time per store). */
  readonly #turns = new Map<string, Promise<void>>();
  /** Names being registered here: the watch leaves them to the registration. */
  readonly #registering = new Set<string>();
  #watch: KvWatch | undefined;
  #closed = false;
  #health: { at: number; answer: Promise<StoreHealth[]> } | undefined;

  constructor(options: CatalogOptions) {
    this.#o = options;
    this.#config = new Map(options.configStores.map((definition) => [definition.name, definition]));
  }

  /**
   * Opens the config-file stores, then reads and watches the catalog and opens its stores;
   * resolves once every store was tried (recovery runs after this). A config store that
   * cannot be reached is logged at once and tried again; a config store whose type or
   * options are wrong stops start-up.
   */
  async start(): Promise<void> {
    for (const definition of this.#config.values()) {
      try {
        await this.#open(definition, 'config');
        this.#opened.set(definition.name, { origin: 'config' });
      } catch (err) {
        if (!isUnreachable(err)) throw err;
        this.#markDown(definition.name, err);
      }
    }
    const first = new Promise<void>((resolveFirst, rejectFirst) => {
      let started = false;
      this.#watch = this.#o.kv.watch(
        catalogKeys.entries,
        (event) => {
          const names = this.#apply(event);
          const opened = Promise.all([...names].map((name) => this.#reconcile(name)));
          if (!started && event.type === 'snapshot') {
            started = true;
            opened.then(() => resolveFirst(), rejectFirst);
          }
        },
        (err) => {
          this.#o.logger.warn({ err }, 'store catalog watch lost; re-listing');
          if (!started) {
            started = true;
            rejectFirst(err);
          }
        },
      );
    });
    await first;
  }

  /** Stops watching and retrying; the stores stay open (the registry closes them). */
  close(): void {
    this.#closed = true;
    this.#watch?.close();
    for (const timer of this.#retries.values()) clearTimeout(timer);
    this.#retries.clear();
  }

  /** The open store named `name`. */
  get(name: string): Store | undefined {
    return this.#o.registry.get(name);
  }

  /** True when the catalog holds a definition of `name`, open here or not. */
  isCatalogued(name: string): boolean {
    return this.#wanted(name) !== undefined;
  }

  validateChange(store: string, change: unknown): void {
    this.#o.registry.validateChange(store, change);
  }

  /** Every catalogued store, sorted by name. */
  list(): CatalogStoreInfo[] {
    const names = new Set([...this.#config.keys(), ...this.#entries.keys()]);
    return [...names]
      .sort()
      .map((name) => this.#info(name))
      .filter((info) => info !== undefined);
  }

  /**
   * Registers a runtime store: checks it, opens it here (reachable, or refused), then
   * creates its catalog entry; every other instance opens it from the watch.
   */
  async register(definition: StoreDefinition, by: string): Promise<CatalogStoreInfo> {
    const { name } = definition;
    const label = `store ${JSON.stringify(name)}`;
    if (this.#config.has(name)) {
      throw new InvalidStoreError(`${label}: a store of this name comes from the config file; a runtime registration cannot replace it`);
    }
    if (this.#entries.has(name) || this.#registering.has(name) || this.get(name))
      throw new InvalidStoreError(`${label}: a store with this name already exists`);
    const secret = findLiteralSecret(definition.options);
    if (secret) throw new LiteralSecretError(secret);
    this.#registering.add(name);
    try {
      try {
        await this.#open(definition, 'runtime');
      } catch (err) {
        if (err instanceof StoreOpenError) throw new InvalidStoreError(err.message);
        throw err;
      }
      const record: CatalogRecord = { name, type: definition.type, options: definition.options, registeredBy: by, registeredAt: new Date().toISOString() };
      let revision: number;
      try {
        revision = await this.#o.kv.create(catalogKeys.entry(name), JSON.stringify(record));
      } catch (err) {
        await this.#o.registry.remove(name).catch(() => undefined);
        if (err instanceof AlreadyExistsError) throw new InvalidStoreError(`${label}: a store with this name already exists`);
        throw err;
      }
      this.#entries.set(name, { record, revision });
      this.#opened.set(name, { origin: 'runtime', revision });
      this.#o.logger.info({ store: name, type: definition.type, by }, 'store registered');
      return this.#info(name) as CatalogStoreInfo;
    } finally {
      this.#registering.delete(name);
      void this.#reconcile(name);
    }
  }

  /**
   * Removes a runtime store: deletes its entry at the revision read, with an audit record in
   * the same transaction; every instance closes it from the watch. The caller checked that
   * no session needs it.
   */
  async remove(name: string, by: string): Promise<void> {
    if (this.#config.has(name)) {
      throw new InvalidStoreError(`store ${JSON.stringify(name)} comes from the config file; remove it there (and restart)`);
    }
    const entry = await this.#o.kv.get(catalogKeys.entry(name));
    if (!entry) throw new StoreNotCataloguedError(name);
    const record = parseRecord(entry.value);
    const at = new Date().toISOString();
    const audit: StoreAuditRecord = { action: 'removed', name, type: record.type, by, at };
    try {
      await this.#o.kv.txn([
        { type: 'delete', key: entry.key, revision: entry.revision },
        { type: 'create', key: catalogKeys.auditRecord(at), value: JSON.stringify(audit), options: { ttlSeconds: this.#o.retentionSeconds } },
      ]);
    } catch (err) {
      if (err instanceof ConstraintViolatedError) throw new CatalogRaceError(name);
      throw err;
    }
    if (this.#entries.get(name)?.revision === entry.revision) this.#entries.delete(name);
    await this.#reconcile(name);
    this.#o.logger.warn({ store: name, type: record.type, by }, 'store removed');
  }

  /** Store removals within the retention period, newest first. */
  async removals(): Promise<StoreAuditRecord[]> {
    const entries = await this.#o.kv.list(catalogKeys.audit, { consistency: 'serializable' });
    return entries.map((entry) => JSON.parse(entry.value) as StoreAuditRecord).sort((a, b) => (a.at < b.at ? 1 : a.at > b.at ? -1 : 0));
  }

  /**
   * Each catalogued store up or down: open stores are probed in parallel, each within
   * `timeoutMs`; the answer is reused for {@link HEALTH_CACHE_MS}.
   */
  health(timeoutMs: number): Promise<StoreHealth[]> {
    const now = performance.now();
    if (this.#health && now - this.#health.at < HEALTH_CACHE_MS) return this.#health.answer;
    const answer = Promise.all(
      this.list().map(async (info): Promise<StoreHealth> => {
        const store = this.get(info.name);
        if (info.status === 'down' || !store) return { name: info.name, status: 'down', error: info.error ?? 'not open here' };
        try {
          await bounded(store.probe?.(), timeoutMs, `did not answer within ${timeoutMs} ms`);
          return { name: info.name, status: 'up' };
        } catch (err) {
          return { name: info.name, status: 'down', error: errorMessage(err) };
        }
      }),
    );
    this.#health = { at: now, answer };
    return answer;
  }

  #info(name: string): CatalogStoreInfo | undefined {
    const wanted = this.#wanted(name);
    if (!wanted) return undefined;
    const record = wanted.origin === 'runtime' ? this.#entries.get(name)?.record : undefined;
    const open = this.#opened.get(name)?.origin === wanted.origin && this.get(name) !== undefined;
    const error = this.#down.get(name);
    return {
      name,
      type: wanted.definition.type,
      origin: wanted.origin,
      options: redactOptions(wanted.definition.options),
      ...(record ? { registeredBy: record.registeredBy, registeredAt: record.registeredAt } : {}),
      status: open ? 'open' : 'down',
      ...(!open ? { error: error ?? 'opening' } : {}),
    };
  }

  /** What should be open under `name`: the config file's store wins over a catalog entry. */
  #wanted(name: string): Wanted | undefined {
    const configured = this.#config.get(name);
    if (configured) return { definition: configured, origin: 'config' };
    const entry = this.#entries.get(name);
    if (!entry) return undefined;
    const { type, options } = entry.record;
    return { definition: { name, type, options }, origin: 'runtime', revision: entry.revision };
  }

  /** Applies a watch event to the entries; returns the names it touched. */
  #apply(event: KvWatchEvent): Set<string> {
    const nameOf = (key: string) => key.slice(catalogKeys.entries.length);
    const touched = new Set<string>();
    const put = (key: string, value: string, revision: number) => {
      const name = nameOf(key);
      touched.add(name);
      try {
        this.#entries.set(name, { record: parseRecord(value), revision });
      } catch (err) {
        this.#o.logger.error({ err, key }, 'unreadable store catalog entry: ignored');
      }
    };
    switch (event.type) {
      case 'snapshot':
        for (const name of this.#entries.keys()) touched.add(name);
        this.#entries.clear();
        for (const entry of event.entries) put(entry.key, entry.value, entry.revision);
        break;
      case 'put':
        put(event.entry.key, event.entry.value, event.entry.revision);
        break;
      case 'delete': {
        const name = nameOf(event.key);
        touched.add(name);
        this.#entries.delete(name);
        break;
      }
    }
    for (const name of touched) {
      if (this.#config.has(name) && this.#entries.has(name)) {
        this.#o.logger.warn({ store: name }, 'a runtime store has the name of a config-file store here: this instance keeps its config store');
      }
    }
    return touched;
  }

  /** Brings `name` on this instance in line with what should be open; one run per name at a time. */
  #reconcile(name: string): Promise<void> {
    const previous = this.#turns.get(name) ?? Promise.resolve();
    const turn = previous.then(() => this.#reconcileNow(name));
    this.#turns.set(name, turn);
    void turn.finally(() => {
      if (this.#turns.get(name) === turn) this.#turns.delete(name);
    });
    return turn;
  }

  async #reconcileNow(name: string): Promise<void> {
    if (this.#registering.has(name)) return;
    const wanted = this.#wanted(name);
    const opened = this.#opened.get(name);
    if (opened && (!wanted || wanted.origin !== opened.origin || wanted.revision !== opened.revision)) {
      this.#opened.delete(name);
      await this.#o.registry.remove(name).catch((err: unknown) => this.#o.logger.warn({ err, store: name }, 'closing a store failed'));
      this.#o.logger.info({ store: name }, 'store closed: it left the catalog');
    }
    if (!wanted) {
      this.#clearDown(name);
      return;
    }
    if (this.#opened.has(name) || this.#closed) return;
    try {
      await this.#open(wanted.definition, wanted.origin);
      this.#opened.set(name, { origin: wanted.origin, revision: wanted.revision });
      if (this.#down.has(name)) this.#o.logger.info({ store: name }, 'store opened after all');
      else if (wanted.origin === 'runtime') this.#o.logger.info({ store: name, type: wanted.definition.type }, 'catalog store opened');
      this.#clearDown(name);
    } catch (err) {
      this.#markDown(name, err);
    }
  }

  /** Resolves `{"env"}` values, confines a runtime sqlite path, creates the store and probes it. */
  async #open(definition: StoreDefinition, origin: StoreOrigin): Promise<Store> {
    const { name, type } = definition;
    let options = resolveEnvRefs(definition.options, this.#o.env ?? process.env);
    if (origin === 'runtime' && type === 'sqlite' && isObject(options) && typeof options.path === 'string') {
      options = { ...options, path: confineSqlitePath(options.path, this.#o.confinement, this.#sqliteFiles(name)) };
    }
    const store = await this.#o.registry.add({ name, type, options }, this.#o.context(name));
    const timeoutMs = this.#o.probeTimeoutMs ?? 3000;
    try {
      await bounded(store.probe?.(), timeoutMs, `did not answer within ${timeoutMs} ms`);
    } catch (err) {
      await this.#o.registry.remove(name).catch(() => undefined);
      throw new StoreOpenError(name, type, `cannot be reached: ${errorMessage(err)}`, { cause: err });
    }
    return store;
  }

  /** The files of every sqlite store but `except`, as this instance resolves them. */
  #sqliteFiles(except: string): string[] {
    const files: string[] = [];
    const names = new Set([...this.#config.keys(), ...this.#entries.keys()]);
    for (const name of names) {
      const wanted = this.#wanted(name);
      if (name === except || wanted?.definition.type !== 'sqlite') continue;
      try {
        const options = resolveEnvRefs(wanted.definition.options, this.#o.env ?? process.env);
        if (!isObject(options) || typeof options.path !== 'string') continue;
        files.push(wanted.origin === 'config' ? resolve(options.path) : resolve(this.#o.confinement.dataDir, options.path));
      } catch {
        // A store whose options do not resolve here has no file here.
      }
    }
    return files;
  }

  #markDown(name: string, err: unknown): void {
    const message = errorMessage(err);
    if (this.#down.get(name) !== message) this.#o.logger.error({ err, store: name }, 'store cannot be opened here; the other stores keep serving; retrying');
    this.#down.set(name, message);
    clearTimeout(this.#retries.get(name));
    if (this.#closed) return;
    const timer = setTimeout(() => {
      this.#retries.delete(name);
      void this.#reconcile(name);
    }, this.#o.retryMs ?? 5000);
    timer.unref();
    this.#retries.set(name, timer);
  }

  #clearDown(name: string): void {
    this.#down.delete(name);
    clearTimeout(this.#retries.get(name));
    this.#retries.delete(name);
  }
}

/** Errors of a store that exists but cannot be reached or opened now (retried), as opposed to a wrong definition. */
function isUnreachable(err: unknown): boolean {
  if (!(err instanceof StoreOpenError)) return false;
  return !(err.cause instanceof CommitdError && err.cause.code === 'INVALID_REQUEST');
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function parseRecord(value: string): CatalogRecord {
  const parsed = JSON.parse(value) as Partial<CatalogRecord>;
  if (typeof parsed.name !== 'string' || typeof parsed.type !== 'string') throw new Error('catalog entry lacks name or type');
  return {
    name: parsed.name,
    type: parsed.type,
    options: parsed.options ?? {},
    registeredBy: parsed.registeredBy ?? 'unknown',
    registeredAt: parsed.registeredAt ?? '',
  };
}

/** `work` within `timeoutMs`, else a rejection with `message`. */
async function bounded(work: Promise<void> | undefined, timeoutMs: number, message: string): Promise<void> {
  if (work === undefined) return;
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      work,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(message)), timeoutMs);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * The coordinator: many concurrent sessions, one per idempotency key, over the coordinator
 * KV. Owns session records, ownership, the commit point, recovery and adoption, the idle
 * timeout and the cap on open sessions (DESIGN.md "Session lifecycle").
 * @module
 */
import type { Logger } from 'pino';
import { AlreadyCommittedError, CommitdError, errorMessage } from '../errors/core.ts';
import { describeKey, toHex } from '../core/keys.ts';
import type { Kv } from '../kv/kv.ts';
import { ConstraintViolatedError, VersionMismatchError } from '../kv/errors.ts';
import { compareNames } from '../core/multi-committer.ts';
import { canonicalJson, canonicalLine, sessionId, storeId, storeIdOfLines } from '../core/session-id.ts';
import type { Store, StoreSession } from '../stores/api.ts';
import type { Metrics } from '../metrics.ts';
import {
  InvalidRequestError,
  KeyReusedError,
  PayloadTooLargeError,
  ServiceUnavailableError,
  SessionBusyError,
  SessionNotFoundError,
  StoreConflictError,
  isRejection,
} from './errors.ts';
import { Failpoints } from './failpoints.ts';
import { Instance } from './instance.ts';
import { deleteLogOps, loadLog, parseResult, parseSession, recordKeys, type ResultRecord, type SessionRecord } from './records.ts';
import { Session, SlotTakenError, type SessionDeps } from './session.ts';
import type { ActiveView, CommittedView, SessionCoordinator, SessionView, StoreDefinition, StoreInfo } from './types.ts';

/** The stores the coordinator can open sessions on (the store registry, seen from here). */
export interface StoreCatalog {
  get(name: string): Store | undefined;
  list(): StoreInfo[];
  /** Throws an error with code INVALID_REQUEST when the change is outside the type's schema. */
  validateChange(store: string, change: unknown): void;
  add(definition: StoreDefinition): Promise<StoreInfo>;
  remove(name: string): Promise<void>;
}

/** Coordinator settings; durations in milliseconds unless named otherwise. */
export interface CoordinatorOptions {
  readonly kv: Kv;
  readonly stores: StoreCatalog;
  readonly instanceId: string;
  readonly logger: Logger;
  readonly metrics?: Metrics;
  readonly failpoints?: Failpoints;
  readonly retentionSeconds?: number;
  readonly idleTimeoutMs?: number;
  readonly maxOpenSessions?: number;
  readonly leaseTtlSeconds?: number;
  readonly recoveryIntervalMs?: number;
  /** Largest change log one session may collect, in bytes of JSON. */
  readonly maxLogBytes?: number;
}

/** How recovery of one key ended. */
type Recovery =
  | { readonly state: 'committed'; readonly result: ResultRecord }
  | { readonly state: 'cancelled' | 'absent' }
  | { readonly state: 'failed'; readonly error: string }
  | { readonly state: 'busy'; readonly owner: string; readonly why: string }
  | { readonly state: 'pending'; readonly error: string };

interface Existing {
  readonly record?: SessionRecord;
  readonly revision: number;
  readonly result?: ResultRecord;
}

function sameNames(a: readonly string[], b: readonly string[]): boolean {
  const sortedB = [...b].sort(compareNames);
  return a.length === b.length && [...a].sort(compareNames).every((name, i) => name === sortedB[i]);
}

/** The session ID a change log produces (what the stores' IDs will hash to). */
export function logSessionId(log: Readonly<Record<string, readonly unknown[]>>): string {
  return toHex(sessionId(Object.entries(log).map(([name, changes]) => [name, storeId(changes)] as const)));
}

function committedView(key: string, result: ResultRecord): CommittedView {
  return { key, state: 'committed', sessionId: result.sessionId, stores: result.stores, committedAt: result.committedAt };
}

/** Drives sessions; implements the operations of the HTTP API. */
export class Coordinator implements SessionCoordinator {
  readonly instanceId: string;
  readonly #kv: Kv;
  readonly #stores: StoreCatalog;
  readonly #logger: Logger;
  readonly #metrics: Metrics | undefined;
  readonly #deps: SessionDeps;
  readonly #idleTimeoutMs: number;
  readonly #maxOpen: number;
  readonly #recoveryIntervalMs: number;
  readonly #maxLogBytes: number;
  readonly #instance: Instance;
  readonly #sessions = new Map<string, Session>();
  readonly #recovering = new Map<string, Promise<Recovery>>();
  readonly #timers: NodeJS.Timeout[] = [];
  #recoveryRun: Promise<void> | undefined;
  #closing = false;

  constructor(options: CoordinatorOptions) {
    this.#kv = options.kv;
    this.#stores = options.stores;
    this.instanceId = options.instanceId;
    this.#logger = options.logger.child({ instance: options.instanceId });
    this.#metrics = options.metrics;
    this.#idleTimeoutMs = options.idleTimeoutMs ?? 60_000;
    this.#maxOpen = options.maxOpenSessions ?? 10_000;
    this.#recoveryIntervalMs = options.recoveryIntervalMs ?? 5_000;
    this.#maxLogBytes = options.maxLogBytes ?? 64 * 1024 * 1024;
    this.#deps = {
      kv: options.kv,
      failpoints: options.failpoints ?? new Failpoints(undefined),
      instanceId: options.instanceId,
      retentionSeconds: options.retentionSeconds ?? 24 * 3600,
      logger: this.#logger,
    };
    this.#instance = new Instance(options.kv, options.instanceId, options.leaseTtlSeconds ?? 10, this.#logger, () => this.#leaseLost());
  }

  /** Registers this instance, recovers what earlier runs left, and starts the timers. */
  async start(): Promise<void> {
    await this.#instance.register();
    await this.recoverOnce();
    const sweep = Math.max(50, Math.min(1000, Math.floor(this.#idleTimeoutMs / 4)));
    this.#timers.push(setInterval(() => this.#cancelIdle(), sweep).unref());
    this.#timers.push(setInterval(() => void this.recoverOnce(), this.#recoveryIntervalMs).unref());
  }

  /** Sessions this instance drives now. */
  get openSessions(): number {
    return this.#sessions.size;
  }

  // --- the HTTP API's operations ---

  async begin(key: string, stores?: readonly string[]): Promise<ActiveView | CommittedView> {
    const names = this.#resolveStores(stores);
    this.#assertNotLocal(key);
    const fingerprint = canonicalJson(names);
    const session = this.#open({ key, names, oneShot: false, fingerprint });
    try {
      await session.run(() => session.committer.begin(key));
      this.#metrics?.sessionsBegun.inc();
      return { key, state: 'active', recovery: false, stores: names };
    } catch (err) {
      this.#drop(session);
      if (err instanceof SlotTakenError) return this.#beginOnExisting(key, names);
      await session.abandon().catch(() => undefined);
      if (err instanceof AlreadyCommittedError) throw new KeyReusedError(key, 'and committed; its result is no longer retained');
      throw err;
    }
  }

  async apply(key: string, store: string, changes: readonly unknown[]): Promise<{ key: string; store: string; applied: number }> {
    const session = await this.#local(key);
    if (!session.stores.has(store)) throw new InvalidRequestError(`store ${JSON.stringify(store)} is not part of session ${JSON.stringify(key)} (stores: ${[...session.stores.keys()].join(', ')})`);
    const lines = this.#validate(store, changes);
    let bytes = 0;
    for (const line of lines) bytes += line.length - 1;
    return session.run(async () => {
      if (this.#sessions.get(key) !== session || session.state !== 'active') throw await this.#notOpen(key);
      if (session.logBytes + bytes > this.#maxLogBytes) {
        throw new PayloadTooLargeError(`session ${key} would exceed the change log limit of ${this.#maxLogBytes} bytes`);
      }
      session.lastTouched = Date.now();
      try {
        await session.apply(store, changes);
      } catch (err) {
        await this.#cancel(session, 'error');
        throw err;
      }
      session.hashLog(store, lines);
      session.logBytes += bytes;
      session.lastTouched = Date.now();
      return { key, store, applied: changes.length };
    });
  }

  async commit(key: string): Promise<CommittedView> {
    const session = this.#owned(key);
    if (!session || session.oneShot) return this.#commitWithoutSession(key);
    return session.run(() => (this.#sessions.get(key) === session ? this.#drive(session) : this.#commitWithoutSession(key)));
  }

  async cancel(key: string): Promise<{ key: string; state: 'cancelled' }> {
    const session = this.#owned(key);
    if (!session) return this.#cancelWithoutSession(key);
    return session.run(async () => {
      if (this.#sessions.get(key) !== session) return this.#cancelWithoutSession(key);
      if (session.state !== 'active' || session.oneShot) throw new SessionBusyError(key, this.instanceId, 'the session is past its commit point and will commit');
      await this.#cancel(session, 'request');
      return { key, state: 'cancelled' as const };
    });
  }

  async commitOnce(key: string, changes: Readonly<Record<string, readonly unknown[]>>): Promise<CommittedView> {
    const names = this.#resolveStores(Object.keys(changes));
    let bytes = 0;
    const ids: [string, Uint8Array][] = [];
    for (const name of names) {
      const lines = this.#validate(name, changes[name] as readonly unknown[]);
      for (const line of lines) bytes += line.length - 1;
      ids.push([name, storeIdOfLines(lines)]);
    }
    if (bytes > this.#maxLogBytes) throw new PayloadTooLargeError(`the changes exceed the change log limit of ${this.#maxLogBytes} bytes`);
    // The session ID the changes define (what logSessionId computes), from the lines just checked.
    const fingerprint = toHex(sessionId(ids));
    const running = this.#owned(key);
    if (running?.oneShot && running.fingerprint === fingerprint && running.outcome) {
      // A retry while the first attempt still runs here: share its outcome.
      await running.outcome;
      return this.#oneShotOnExisting(key, fingerprint);
    }
    this.#assertNotLocal(key);
    const session = this.#open({ key, names, oneShot: true, fingerprint });
    const outcome = session.run(async () => {
      try {
        await session.committer.begin(key);
      } catch (err) {
        this.#drop(session);
        if (err instanceof AlreadyCommittedError) return this.#oneShotOnExisting(key, fingerprint);
        throw err;
      }
      this.#metrics?.sessionsBegun.inc();
      try {
        for (const name of names) await session.apply(name, changes[name] as readonly unknown[]);
      } catch (err) {
        await this.#cancel(session, 'error');
        throw err;
      }
      return this.#drive(session);
    });
    session.outcome = outcome.catch(() => undefined);
    return outcome;
  }

  async get(key: string): Promise<SessionView | undefined> {
    const session = this.#owned(key);
    if (session) {
      return { key, state: session.state, stores: [...session.stores.keys()].sort(compareNames), owner: this.instanceId, startedAt: session.startedAt };
    }
    const { record, result } = await this.#read(key);
    if (result) return committedView(key, result);
    if (!record) return undefined;
    return this.#recordView(key, record);
  }

  async list(filter: { state?: 'active' | 'committing' | 'failed' } = {}): Promise<SessionView[]> {
    const entries = await this.#kv.list(recordKeys.sessions, { consistency: 'serializable' });
    const views: SessionView[] = [];
    for (const entry of entries) {
      const key = entry.key.slice(recordKeys.sessions.length);
      const record = parseSession(entry.value);
      if (!filter.state || record.state === filter.state) views.push(this.#recordView(key, record));
    }
    if (!filter.state || filter.state === 'failed') this.#metrics?.sessionsFailed.set(views.filter((v) => v.state === 'failed').length);
    return views;
  }

  async resolve(key: string, action: 'retry' | 'abandon'): Promise<SessionView | { key: string; state: 'abandoned' }> {
    const { record, revision, result } = await this.#read(key);
    if (result) return committedView(key, result);
    if (!record) throw new SessionNotFoundError(key);
    if (record.state !== 'failed') throw new SessionBusyError(key, record.owner, `the session is ${record.state}, not failed`);
    // Both writes compare the revision read above; losing to a concurrent resolve (another
    // operator, another instance) is a 409, not an unmapped KV error (a 500).
    const raced = (err: unknown): never => {
      if (err instanceof VersionMismatchError || err instanceof ConstraintViolatedError) {
        throw new SessionBusyError(key, record.owner, 'another request resolved or changed the session first; read it again');
      }
      throw err;
    };
    if (action === 'abandon') {
      await this.#kv.txn([{ type: 'delete', key: recordKeys.session(key), revision }, ...(await deleteLogOps(this.#kv, key, record))]).catch(raced);
      this.#logger.warn({ key }, 'failed session abandoned by an operator');
      return { key, state: 'abandoned' };
    }
    const retried: SessionRecord = { ...record, state: 'committing', owner: this.instanceId, error: undefined };
    const newRevision = await this.#kv.update(recordKeys.session(key), JSON.stringify(retried), revision).catch(raced);
    const outcome = await this.#singleFlight(key, () => this.#rollForward(key, retried, newRevision));
    return this.#answerRecovery(key, outcome);
  }

  listStores(): StoreInfo[] {
    return this.#stores.list();
  }

  async addStore(definition: StoreDefinition): Promise<StoreInfo> {
    try {
      return await this.#stores.add(definition);
    } catch (err) {
      // A store that cannot open (bad options, server unreachable) is the request's problem.
      if (err instanceof CommitdError && err.code === 'STORE_OPEN_FAILED') throw new InvalidRequestError(err.message);
      throw err;
    }
  }

  async removeStore(name: string): Promise<void> {
    if (!this.#stores.get(name)) throw new SessionNotFoundError(`store:${name}`);
    for (const session of this.#sessions.values()) {
      if (session.stores.has(name)) throw new SessionBusyError(session.key, this.instanceId, `store ${name} is in use by an open session`);
    }
    await this.#stores.remove(name);
  }

  async ready(): Promise<void> {
    try {
      await this.#kv.ping();
    } catch (err) {
      throw new ServiceUnavailableError('the coordinator KV is unreachable', 1, { cause: err });
    }
  }

  /** SIGTERM: cancel open sessions, let committing ones finish, give up the lease. */
  async shutdown(timeoutMs = 10_000): Promise<void> {
    this.#closing = true;
    for (const timer of this.#timers) clearInterval(timer);
    const pending = [...this.#sessions.values()].map((session) =>
      session.run(async () => {
        if (this.#sessions.get(session.key) === session && session.state === 'active' && !session.oneShot) await this.#cancel(session, 'shutdown');
      }),
    );
    const deadline = new Promise<void>((resolve) => setTimeout(resolve, timeoutMs).unref());
    await Promise.race([Promise.allSettled(pending), deadline]);
    await Promise.race([this.#recoveryRun ?? Promise.resolve(), deadline]);
    await this.#instance.stop();
  }

  // --- recovery ---

  /**
   * One recovery pass: adopt every session whose owner's instance is gone (or is this
   * instance's earlier run), roll `committing` ones forward and cancel `active` ones, then
   * resolve orphaned prepared transactions of stores that have them.
   */
  recoverOnce(): Promise<void> {
    this.#recoveryRun ??= this.#recoverPass().finally(() => {
      this.#recoveryRun = undefined;
    });
    return this.#recoveryRun;
  }

  async #recoverPass(): Promise<void> {
    if (this.#closing) return;
    try {
      const alive = new Map<string, boolean>([[this.instanceId, true]]);
      // Oldest revision first: a record last written at its commit point replays in commit
      // order, so sessions of one sqlite commit group lost together apply as they first did.
      const entries = (await this.#kv.list(recordKeys.sessions)).sort((x, y) => x.revision - y.revision);
      for (const entry of entries) {
        const key = entry.key.slice(recordKeys.sessions.length);
        const record = parseSession(entry.value);
        if (this.#closing || record.state === 'failed' || this.#sessions.has(key) || this.#recovering.has(key)) continue;
        if (record.owner !== this.instanceId) {
          if (!alive.has(record.owner)) alive.set(record.owner, await this.#instance.isAlive(record.owner));
          if (alive.get(record.owner)) continue;
        }
        const outcome = await this.#recoverKey(key);
        this.#logger.info({ key, outcome: outcome.state }, 'recovered a session');
      }
      await this.#resolveOrphans();
    } catch (err) {
      this.#logger.warn({ err }, 'recovery pass failed; the next one retries');
    }
  }

  async #resolveOrphans(): Promise<void> {
    for (const info of this.#stores.list()) {
      const store = this.#stores.get(info.name);
      if (!store?.resolveOrphans) continue;
      await store.resolveOrphans(async (keyOfOrphan) => {
        const key = describeKey(keyOfOrphan);
        if (this.#sessions.has(key)) return 'keep';
        const { record, result } = await this.#read(key);
        if (result || record?.state === 'committing') return 'commit';
        if (record && record.owner !== this.instanceId && (await this.#instance.isAlive(record.owner))) return 'keep';
        return 'rollback';
      });
    }
  }

  #recoverKey(key: string): Promise<Recovery> {
    return this.#singleFlight(key, async () => {
      const { record, revision, result } = await this.#read(key);
      if (result) return { state: 'committed', result };
      if (!record) return { state: 'absent' };
      if (this.#sessions.has(key)) return { state: 'busy', owner: this.instanceId, why: 'the session is open here' };
      if (record.owner !== this.instanceId && (await this.#instance.isAlive(record.owner))) {
        return { state: 'busy', owner: record.owner, why: `the session is ${record.state} there` };
      }
      if (record.state === 'failed') return { state: 'failed', error: record.error ?? 'roll-forward failed' };
      const adopted = await this.#adopt(key, record, revision);
      if (!adopted) return { state: 'busy', owner: record.owner, why: 'another instance adopted it first' };
      await this.#deps.failpoints.fire('recovery.afterAdopt');
      if (record.state === 'active') {
        // Nothing of an active session reached any store: cancel it; a retry starts afresh.
        await this.#kv.txn([{ type: 'delete', key: recordKeys.session(key), revision: adopted.revision }, ...(await deleteLogOps(this.#kv, key, record))]);
        this.#metrics?.sessionsRecovered.inc({ outcome: 'cancelled' });
        return { state: 'cancelled' };
      }
      return this.#rollForward(key, adopted.record, adopted.revision);
    });
  }

  /** Takes ownership with a compare-revision write, so only one adopter wins. */
  async #adopt(key: string, record: SessionRecord, revision: number): Promise<{ record: SessionRecord; revision: number } | undefined> {
    if (record.owner === this.instanceId) return { record, revision };
    const adopted = { ...record, owner: this.instanceId };
    try {
      const newRevision = await this.#kv.update(recordKeys.session(key), JSON.stringify(adopted), revision);
      this.#logger.info({ key, from: record.owner }, 'adopted a session of a dead instance');
      return { record: adopted, revision: newRevision };
    } catch (err) {
      if (err instanceof VersionMismatchError) return undefined;
      throw err;
    }
  }

  /** Roll forward a `committing` session from its log: recover every store, re-apply, commit. */
  async #rollForward(key: string, record: SessionRecord, revision: number): Promise<Recovery> {
    const missing = record.stores.filter((name) => !this.#stores.get(name));
    if (missing.length > 0) return this.#markFailed(key, record, revision, `store(s) ${missing.join(', ')} are not configured here`);
    const log = await loadLog(this.#kv, key, record);
    const session = new Session(this.#deps, {
      key,
      stores: new Map(record.stores.map((name) => [name, (this.#stores.get(name) as Store).session()])),
      oneShot: record.oneShot ?? false,
      fingerprint: record.fingerprint,
      adopted: { record, revision },
    });
    this.#sessions.set(key, session);
    try {
      await session.committer.begin(key);
      try {
        for (const name of record.stores) await session.apply(name, log[name] ?? []);
        await session.prepare();
      } catch (err) {
        session.keepRecord = true;
        await session.committer.cancel().catch(() => undefined);
        throw err;
      }
      const result = await session.commitStores();
      this.#metrics?.sessionsRecovered.inc({ outcome: 'committed' });
      this.#metrics?.sessionsCommitted.inc();
      return { state: 'committed', result };
    } catch (err) {
      if (isRejection(err)) return this.#markFailed(key, record, session.revision, errorMessage(err));
      this.#logger.warn({ err, key }, 'roll-forward did not finish; recovery retries it');
      return { state: 'pending', error: errorMessage(err) };
    } finally {
      if (this.#sessions.get(key) === session) this.#sessions.delete(key);
    }
  }

  async #markFailed(key: string, record: SessionRecord, revision: number, error: string): Promise<Recovery> {
    const failed: SessionRecord = { ...record, state: 'failed', error };
    await this.#kv.update(recordKeys.session(key), JSON.stringify(failed), revision);
    this.#logger.error({ key, error }, 'roll-forward rejected by a store: session failed, awaiting an operator');
    this.#metrics?.sessionsRecovered.inc({ outcome: 'failed' });
    return { state: 'failed', error };
  }

  #singleFlight(key: string, work: () => Promise<Recovery>): Promise<Recovery> {
    const running = this.#recovering.get(key);
    if (running) return running;
    const flight = work().finally(() => this.#recovering.delete(key));
    this.#recovering.set(key, flight);
    return flight;
  }

  // --- the commit protocol for one session ---

  /** Steps 4a–4e for a session this instance drives; the caller holds the session's turn. */
  async #drive(session: Session): Promise<CommittedView> {
    const started = process.hrtime.bigint();
    if (session.state === 'active') {
      try {
        await session.prepare();
      } catch (err) {
        await this.#cancel(session, 'error');
        throw err;
      }
      try {
        // A one-shot session's fingerprint already is the session ID of its log.
        await session.writeCommitPoint(session.oneShot ? session.fingerprint : session.logSessionId());
      } catch (err) {
        // Unknown whether the commit point landed: release the stores, keep the record,
        // and let recovery decide from it (committing → roll forward, active → cancel).
        session.keepRecord = !(err instanceof SlotTakenError);
        await session.committer.cancel().catch(() => undefined);
        this.#drop(session);
        if (err instanceof SlotTakenError) return this.#oneShotOnExisting(session.key, session.fingerprint);
        this.#scheduleRecovery(session.key);
        throw new ServiceUnavailableError(`commit of ${session.key} was interrupted (${errorMessage(err)}); retry it`, 1, { cause: err });
      }
    }
    let result;
    try {
      result = await session.commitStores();
    } catch (err) {
      // Past the commit point the session will commit: recovery rolls it forward.
      this.#drop(session);
      this.#scheduleRecovery(session.key);
      throw new ServiceUnavailableError(`commit of ${session.key} is past its commit point and will complete (${errorMessage(err)}); retry for the result`, 1, { cause: err });
    }
    this.#drop(session);
    this.#metrics?.sessionsCommitted.inc();
    this.#metrics?.commitSeconds.observe(Number(process.hrtime.bigint() - started) / 1e9);
    return committedView(session.key, result);
  }

  #scheduleRecovery(key: string): void {
    setTimeout(() => void this.#recoverKey(key).catch((err: unknown) => this.#logger.warn({ err, key }, 'recovery after an interrupted commit failed')), 100).unref();
  }

  async #cancel(session: Session, reason: string): Promise<void> {
    try {
      await session.committer.cancel();
    } finally {
      this.#drop(session);
      this.#metrics?.sessionsCancelled.inc({ reason });
      session.logger.info({ reason }, 'session cancelled');
    }
  }

  // --- answers for keys without a session here ---

  async #beginOnExisting(key: string, names: readonly string[]): Promise<ActiveView | CommittedView> {
    const { record, revision, result } = await this.#read(key);
    if (result) {
      if (sameNames(Object.keys(result.stores), names)) return committedView(key, result);
      throw new KeyReusedError(key, `with stores ${Object.keys(result.stores).join(', ')}`);
    }
    if (!record) throw new ServiceUnavailableError(`session ${key} changed while beginning; retry`, 1);
    if (record.owner !== this.instanceId && (await this.#instance.isAlive(record.owner))) {
      throw new SessionBusyError(key, record.owner, `the session is ${record.state}`);
    }
    if (record.state !== 'active') return this.#answerRecovery(key, await this.#recoverKey(key));
    if (!sameNames(record.stores, names)) throw new KeyReusedError(key, `with stores ${record.stores.join(', ')}`);
    const adopted = await this.#adopt(key, record, revision);
    if (!adopted) throw new SessionBusyError(key, record.owner, 'another instance adopted it first');
    // Work a dead owner prepared before its commit point must not commit with the resumed session.
    await this.#resolveOrphans();
    this.#assertNotLocal(key);
    const session = this.#open({ key, names, oneShot: false, fingerprint: record.fingerprint, adopted });
    try {
      await session.run(() => session.committer.begin(key));
    } catch (err) {
      this.#drop(session);
      throw err;
    }
    this.#metrics?.sessionsBegun.inc();
    this.#metrics?.sessionsRecovered.inc({ outcome: 'resumed' });
    return { key, state: 'active', recovery: true, stores: names };
  }

  async #oneShotOnExisting(key: string, fingerprint: string): Promise<CommittedView> {
    const { record, result } = await this.#read(key);
    if (result) {
      if (result.sessionId === fingerprint) return committedView(key, result);
      throw new KeyReusedError(key, 'with other changes');
    }
    if (!record) throw new KeyReusedError(key, 'and committed; its result is no longer retained');
    if (record.fingerprint !== fingerprint) throw new KeyReusedError(key, 'with other stores or changes');
    return this.#answerRecovery(key, await this.#recoverKey(key));
  }

  async #commitWithoutSession(key: string): Promise<CommittedView> {
    return this.#answerRecovery(key, await this.#recoverKey(key));
  }

  async #cancelWithoutSession(key: string): Promise<{ key: string; state: 'cancelled' }> {
    const { record, result } = await this.#read(key);
    if (result) throw new SessionBusyError(key, this.instanceId, 'the session is already committed');
    if (!record) throw new SessionNotFoundError(key);
    if (record.state !== 'active') throw new SessionBusyError(key, record.owner, `the session is ${record.state}`);
    const outcome = await this.#recoverKey(key);
    if (outcome.state === 'cancelled' || outcome.state === 'absent') return { key, state: 'cancelled' };
    return this.#answerRecovery(key, outcome).then(() => {
      throw new SessionBusyError(key, this.instanceId, 'the session committed');
    });
  }

  /** Turns the outcome of a recovery into the answer of a request about that key. */
  async #answerRecovery(key: string, outcome: Recovery): Promise<CommittedView> {
    switch (outcome.state) {
      case 'committed':
        return committedView(key, outcome.result);
      case 'busy':
        throw new SessionBusyError(key, outcome.owner, outcome.why);
      case 'failed':
        throw new StoreConflictError('(roll-forward)', `session ${key} failed and awaits an operator: ${outcome.error}`);
      case 'pending':
        throw new ServiceUnavailableError(`session ${key} is past its commit point and will complete (${outcome.error}); retry`, 1);
      default:
        throw new SessionNotFoundError(key);
    }
  }

  // --- small helpers ---

  async #read(key: string): Promise<Existing> {
    const entry = await this.#kv.get(recordKeys.session(key));
    if (entry) return { record: parseSession(entry.value), revision: entry.revision };
    const result = await this.#kv.get(recordKeys.result(key));
    return { revision: 0, result: result ? parseResult(result.value) : undefined };
  }

  #recordView(key: string, record: SessionRecord): SessionView {
    return {
      key,
      state: record.state,
      stores: record.stores,
      owner: record.owner,
      startedAt: record.startedAt,
      ...(record.state === 'committing' || record.state === 'failed' ? { sessionId: record.fingerprint } : {}),
      ...(record.error ? { error: record.error } : {}),
    };
  }

  #resolveStores(stores: readonly string[] | undefined): string[] {
    const names = stores ?? this.#stores.list().map((s) => s.name);
    if (names.length === 0) throw new InvalidRequestError('a session needs at least one store');
    if (new Set(names).size !== names.length) throw new InvalidRequestError('a store is named twice');
    const unknown = names.filter((name) => !this.#stores.get(name));
    if (unknown.length > 0) throw new InvalidRequestError(`unknown store(s): ${unknown.join(', ')}`);
    return [...names].sort(compareNames);
  }

  /**
   * Checks every change against its store type and canonical JSON.
   * @returns each change's {@link canonicalLine}: its length counts against the log limit
   */
  #validate(store: string, changes: readonly unknown[]): string[] {
    return changes.map((change, i) => {
      try {
        this.#stores.validateChange(store, change);
        return canonicalLine(change);
      } catch (err) {
        const message = errorMessage(err);
        throw new InvalidRequestError(`changes[${i}] for store ${JSON.stringify(store)}: ${message}`);
      }
    });
  }

  /**
   * The session under `key` this instance drives, served from memory — no KV read — only
   * while the instance's lease certainly holds: until then no other instance can have
   * adopted the record, so only this process changes it and memory is its truth. Past the
   * lease (even if the expiry timer has not fired yet, say after the event loop was
   * blocked), every session is dropped first and the caller falls back to the KV.
   */
  #owned(key: string): Session | undefined {
    // An overdue loss is reported here, and #leaseLost drops every session before the lookup.
    if (this.#sessions.has(key)) this.#instance.holdsLease();
    return this.#sessions.get(key);
  }

  #assertNotLocal(key: string): void {
    if (this.#sessions.has(key)) throw new SessionBusyError(key, this.instanceId, 'a session under this key is open; cancel it or wait for its idle timeout');
  }

  async #local(key: string): Promise<Session> {
    const session = this.#owned(key);
    if (session && !session.oneShot) return session;
    throw await this.#notOpen(key);
  }

  /** Why a key has no open session here: the error to answer with. */
  async #notOpen(key: string): Promise<Error> {
    const { record, result } = await this.#read(key);
    if (result) return new KeyReusedError(key, 'and committed: no changes can be added');
    if (record) return new SessionBusyError(key, record.owner, `the session is ${record.state} ${record.owner === this.instanceId ? 'and not open here' : 'on another instance'}`);
    return new SessionNotFoundError(key);
  }

  #open(start: { key: string; names: readonly string[]; oneShot: boolean; fingerprint: string; adopted?: { record: SessionRecord; revision: number } }): Session {
    if (this.#closing) throw new ServiceUnavailableError('commitd is shutting down', 5);
    // Without a live lease other instances may take a new record for a dead one's at once.
    if (!this.#instance.holdsLease()) throw new ServiceUnavailableError('this instance lost its lease and is registering again', 1);
    if (this.#sessions.size >= this.#maxOpen) throw new ServiceUnavailableError(`too many open sessions (${this.#maxOpen})`, 1);
    const stores = new Map<string, StoreSession>(start.names.map((name) => [name, (this.#stores.get(name) as Store).session()]));
    const session = new Session(this.#deps, { key: start.key, stores, oneShot: start.oneShot, fingerprint: start.fingerprint, adopted: start.adopted });
    this.#sessions.set(start.key, session);
    this.#metrics?.sessionsOpen.set(this.#sessions.size);
    return session;
  }

  #drop(session: Session): void {
    if (this.#sessions.get(session.key) === session) this.#sessions.delete(session.key);
    this.#metrics?.sessionsOpen.set(this.#sessions.size);
  }

  #cancelIdle(): void {
    const now = Date.now();
    for (const session of this.#sessions.values()) {
      if (session.oneShot || session.state !== 'active' || now - session.lastTouched < this.#idleTimeoutMs) continue;
      void session
        .run(async () => {
          if (this.#sessions.get(session.key) === session && session.state === 'active' && Date.now() - session.lastTouched >= this.#idleTimeoutMs) {
            await this.#cancel(session, 'idle');
          }
        })
        .catch((err: unknown) => session.logger.warn({ err }, 'idle cancel failed'));
    }
  }

  /** The lease is gone: another instance may adopt our sessions, so stop driving them. */
  #leaseLost(): void {
    for (const session of [...this.#sessions.values()]) {
      session.keepRecord = true;
      this.#drop(session);
      void session.committer.cancel().catch(() => undefined);
      session.logger.error('lease lost: stopped driving this session');
    }
  }
}

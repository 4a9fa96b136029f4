/**
 * The coordinator: the operations of the HTTP API over many concurrent sessions, one per
 * idempotency key. A facade: the session table holds the sessions this instance drives,
 * each session runs its own state machine, recovery finishes what crashes left, and the
 * answers for keys without a live session read the KV (DESIGN.md "Session lifecycle").
 * @module
 */
import type { Logger } from 'pino';
import { AlreadyCommittedError, CommitdError } from '../errors/core.ts';
import { deadlineIn, withDeadline } from '../kv/deadline.ts';
import type { Kv } from '../kv/kv.ts';
import { ConstraintViolatedError, VersionMismatchError } from '../kv/errors.ts';
import { compareNames } from '../core/multi-committer.ts';
import { canonicalLine, SessionHasher } from '../core/session-id.ts';
import { errorMessage } from '../errors/catalogue.ts';
import type { Store } from '../stores/api.ts';
import type { Metrics } from '../metrics.ts';
import { KeyAnswers, committedView, recordView, replayedView } from './answers.ts';
import {
  InvalidRequestError,
  KeyReusedError,
  LeaseLostError,
  PayloadTooLargeError,
  ServiceUnavailableError,
  SessionBusyError,
  SessionNotFoundError,
  StoreNotFoundError,
  NOTHING_TO_COMMIT,
} from './errors.ts';
import { Failpoints } from './failpoints.ts';
import { auditOf, auditOp, listSessions } from './history.ts';
import { Instance } from './instance.ts';
import { listInstances, sessionLog, type InstanceView } from './inspect.ts';
import { LogBudget } from './log-budget.ts';
import { deleteSessionOps, parseSession, recordKeys, type ChangeLog, type ResultRecord, type SessionRecord } from './records.ts';
import { SlotTakenError } from './record-slot.ts';
import { Recovery, readKey } from './recovery.ts';
import { SessionEndedError, type Session } from './session.ts';
import { SessionTable, type OpenRequest } from './session-table.ts';
import type {
  ActiveView,
  CommittedView,
  ListableState,
  ReadyView,
  SessionCoordinator,
  SessionPage,
  SessionView,
  StoreDefinition,
  StoreHealth,
  StoreInfo,
  StoreRemoval,
} from './types.ts';

/** The stores the coordinator can open sessions on (the store catalog, seen from here). */
export interface StoreCatalog {
  /** The store, when it is open on this instance. */
  get(name: string): Store | undefined;
  list(): StoreInfo[];
  /** Throws an error with code INVALID_REQUEST when the change is outside the type's schema. */
  validateChange(store: string, change: unknown): void;
  /** Registers a store; `by` names who asked (audit). */
  add(definition: StoreDefinition, by: string): Promise<StoreInfo>;
  remove(name: string, by: string): Promise<void>;
  /** True when the store is defined in the catalog, open here or not (yet). */
  isCatalogued?(name: string): boolean;
  /** Each store up or down, every probe within `timeoutMs`. */
  health?(timeoutMs: number): Promise<StoreHealth[]>;
  /** Store removals kept for the retention period, newest first. */
  removals?(): Promise<StoreRemoval[]>;
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
  /**
   * Answer a commit once every store committed, before its result lands in the KV
   * (`RecordSlot.release`). A retry meanwhile waits for the result: on this instance for
   * the write, on another for the `committing` record to settle (`settleWaitMs`).
   */
  readonly earlyReply?: boolean;
  /**
   * How long a request waits for another live instance's `committing` record to settle
   * before answering `session_busy` (default 2000 ms; see `settle.ts`).
   */
  readonly settleWaitMs?: number;
  /**
   * Prepare a session's sqlite stores (those that queue in call order) at once rather than
   * one after the other: only where no other process takes their locks, the embedded KV
   * (see `SessionDeps.prepareTogether`).
   */
  readonly prepareTogether?: boolean;
  readonly idleTimeoutMs?: number;
  readonly maxOpenSessions?: number;
  readonly leaseTtlSeconds?: number;
  readonly recoveryIntervalMs?: number;
  /** Largest change log one session may collect, in bytes of JSON. */
  readonly maxLogBytes?: number;
  /** Largest total of the change logs all open sessions hold, in bytes of JSON (see `log-budget.ts` for what is counted). */
  readonly openLogBytes?: number;
  /** Awaited after the instance registered and before the first recovery pass: the catalog's stores open. */
  readonly storesReady?: () => Promise<void>;
}

/** Bound of the KV probes behind /readyz and the failed-sessions gauge: an answer within 1 s, whatever the KV does. */
export const PROBE_DEADLINE_MS = 1_000;
/** Bound of `/readyz`'s KV ping and of its store probes, in ms: it answers within 1 s. */
const READY_KV_MS = 800;
const READY_STORE_MS = 600;

/** Defaults of {@link CoordinatorOptions}: the one place they are written. */
export const COORDINATOR_DEFAULTS = {
  retentionSeconds: 24 * 3600,
  idleTimeoutMs: 60_000,
  maxOpenSessions: 10_000,
  leaseTtlSeconds: 10,
  recoveryIntervalMs: 5_000,
  maxLogBytes: 64 * 1024 * 1024,
  openLogBytes: 256 * 1024 * 1024,
} as const;

/** Drives sessions; implements the operations of the HTTP API. */
export class Coordinator implements SessionCoordinator {
  readonly instanceId: string;
  readonly #kv: Kv;
  readonly #stores: StoreCatalog;
  readonly #logger: Logger;
  readonly #metrics: Metrics | undefined;
  readonly #idleTimeoutMs: number;
  readonly #retentionSeconds: number;
  readonly #recoveryIntervalMs: number;
  readonly #maxLogBytes: number;
  readonly #logBudget: LogBudget;
  readonly #instance: Instance;
  readonly #table: SessionTable;
  readonly #recovery: Recovery;
  readonly #answers: KeyAnswers;
  readonly #timers: NodeJS.Timeout[] = [];
  readonly #storesReady: (() => Promise<void>) | undefined;

  constructor(options: CoordinatorOptions) {
    const settings = { ...COORDINATOR_DEFAULTS, ...withoutUndefined(options) };
    this.#kv = options.kv;
    this.#stores = options.stores;
    this.#storesReady = options.storesReady;
    this.instanceId = options.instanceId;
    this.#logger = options.logger.child({ instance: options.instanceId });
    this.#metrics = options.metrics;
    this.#idleTimeoutMs = settings.idleTimeoutMs;
    this.#retentionSeconds = settings.retentionSeconds;
    this.#recoveryIntervalMs = settings.recoveryIntervalMs;
    this.#maxLogBytes = settings.maxLogBytes;
    this.#logBudget = new LogBudget(settings.openLogBytes, this.#metrics);
    const failpoints = options.failpoints ?? new Failpoints(undefined);
    this.#instance = new Instance(options.kv, options.instanceId, settings.leaseTtlSeconds, this.#logger, () => this.#table.relinquishAll());
    this.#table = new SessionTable({
      session: {
        kv: options.kv,
        failpoints,
        instanceId: options.instanceId,
        retentionSeconds: settings.retentionSeconds,
        earlyReply: options.earlyReply ?? false,
        prepareTogether: options.prepareTogether ?? false,
        logger: this.#logger,
        maxLogBytes: this.#maxLogBytes,
        logBudget: this.#logBudget,
      },
      stores: options.stores,
      instance: this.#instance,
      maxOpen: settings.maxOpenSessions,
      metrics: this.#metrics,
      scheduleRecovery: (key) => this.#recovery.schedule(key),
    });
    this.#recovery = new Recovery({
      kv: options.kv,
      table: this.#table,
      stores: options.stores,
      instance: this.#instance,
      failpoints,
      logger: this.#logger,
      metrics: this.#metrics,
    });
    this.#answers = new KeyAnswers({
      kv: options.kv,
      table: this.#table,
      recovery: this.#recovery,
      instance: this.#instance,
      metrics: this.#metrics,
      settleWaitMs: options.settleWaitMs ?? DEFAULT_SETTLE_WAIT_MS,
    });
    this.#metrics?.countFailedSessionsWith(() => this.#countFailed());
  }

  /** Failed sessions in the KV (every instance's), for the gauge; bounded like a readiness probe. */
  async #countFailed(): Promise<number> {
    const listing = this.#kv.list(recordKeys.sessions, { consistency: 'serializable' });
    const entries = await withDeadline(listing, deadlineIn(PROBE_DEADLINE_MS).signal, () => new Error('the coordinator KV did not answer in time'));
    return entries.filter((entry) => parseSession(entry.value).state === 'failed').length;
  }

  /** Registers this instance, recovers what earlier runs left, and starts the timers. */
  async start(): Promise<void> {
    await this.#instance.register();
    await this.#storesReady?.();
    await this.recoverOnce();
    const sweep = Math.max(50, Math.min(1000, Math.floor(this.#idleTimeoutMs / 4)));
    this.#timers.push(setInterval(() => this.#cancelIdle(), sweep).unref());
    this.#timers.push(setInterval(() => void this.recoverOnce(), this.#recoveryIntervalMs).unref());
  }

  /** Sessions this instance drives now. */
  get openSessions(): number {
    return this.#table.size;
  }

  /** Bytes the open sessions' change logs hold now (counted against `openLogBytes`). */
  get openLogBytes(): number {
    return this.#logBudget.held;
  }

  /** One recovery pass (see {@link Recovery.recoverOnce}). */
  recoverOnce(): Promise<void> {
    return this.#recovery.recoverOnce();
  }

  async begin(key: string, stores?: readonly string[]): Promise<ActiveView | CommittedView> {
    await this.#landed(key);
    const names = this.#resolveStores(stores);
    this.#table.assertFree(key);
    const opened = await this.#open({ key, names, oneShot: false, recoverOnInterrupt: true }, (result) => this.#answers.beginCommitted(key, names, result));
    if ('answer' in opened) return opened.answer;
    const { session } = opened;
    try {
      await session.run(() => session.begin());
    } catch (err) {
      if (err instanceof SlotTakenError) return this.#answers.begin(key, names);
      if (err instanceof AlreadyCommittedError) throw new KeyReusedError(key, 'and committed; its result is no longer retained');
      throw err;
    }
    this.#metrics?.sessionsBegun.inc();
    return { key, state: 'active', recovery: false, stores: names };
  }

  async apply(key: string, store: string, changes: readonly unknown[]): Promise<{ key: string; store: string; applied: number }> {
    await this.#landed(key);
    const session = this.#table.owned(key);
    if (!session || session.oneShot) throw await this.#answers.notOpen(key);
    if (!session.storeNames.includes(store)) {
      throw new InvalidRequestError(`store ${JSON.stringify(store)} is not part of session ${JSON.stringify(key)} (stores: ${session.storeNames.join(', ')})`);
    }
    const lines = this.#validate(store, changes);
    return session.run(async () => {
      try {
        await session.apply(store, changes, lines);
      } catch (err) {
        if (err instanceof SessionEndedError) throw await this.#answers.notOpen(key);
        throw err;
      }
      return { key, store, applied: changes.length };
    });
  }

  async commit(key: string): Promise<CommittedView> {
    await this.#landed(key);
    const session = this.#table.owned(key);
    if (!session || session.oneShot) return this.#answers.commit(key);
    return session.run(async () => {
      // A duplicate that waited for the first commit's turn: with the early reply the result
      // write may still be on its way, so the answer comes from the session itself.
      const committed = session.committedResult;
      if (!session.open) return committed ? replayedView(key, committed) : this.#answers.commit(key);
      // DESIGN "The boundary" 6: the session stays open, changes may still come.
      if (session.acceptsChanges && !session.hasChanges) {
        throw new InvalidRequestError(`session ${JSON.stringify(key)} has no change to commit: a session that changes nothing is refused; it stays open`);
      }
      return this.#commitOpen(session);
    });
  }

  async cancel(key: string): Promise<{ key: string; state: 'cancelled' }> {
    await this.#landed(key);
    const session = this.#table.owned(key);
    if (!session) return this.#answers.cancel(key);
    return session.run(async () => {
      if (!session.open) return this.#answers.cancel(key);
      if (!session.acceptsChanges) throw new SessionBusyError(key, this.instanceId, 'the session is past its commit point and will commit');
      await session.cancel('request');
      return { key, state: 'cancelled' as const };
    });
  }

  async commitOnce(key: string, changes: Readonly<Record<string, readonly unknown[]>>): Promise<CommittedView> {
    // DESIGN "The boundary" 6: refused before anything is opened, so the key stays unused.
    if (Object.values(changes).every((list) => list.length === 0)) throw new InvalidRequestError(NOTHING_TO_COMMIT);
    const names = this.#resolveStores(Object.keys(changes));
    const hasher = new SessionHasher(names);
    let bytes = 0;
    for (const name of names) {
      const lines = this.#validate(name, changes[name] as readonly unknown[]);
      for (const line of lines) bytes += line.length - 1;
      hasher.addLines(name, lines);
    }
    if (bytes > this.#maxLogBytes) throw new PayloadTooLargeError(`the changes exceed the change log limit of ${this.#maxLogBytes} bytes`);
    const sessionId = hasher.sessionIdHex();
    await this.#landed(key);
    const running = this.#table.owned(key);
    if (running?.oneShot && running.sessionId === sessionId) {
      // A retry while the first attempt, or the recovery rolling it forward, still runs
      // here: share its outcome.
      await running.ended;
      return this.#answers.oneShot(key, sessionId);
    }
    this.#table.assertFree(key);
    // Over the global log cap this throws before anything is opened: the key stays unused.
    const opened = await this.#open({ key, names, oneShot: true, hasher, recoverOnInterrupt: true, logBytes: bytes }, (result) =>
      this.#answers.oneShotCommitted(key, sessionId, result),
    );
    if ('answer' in opened) return opened.answer;
    const { session } = opened;
    return session.run(async () => {
      try {
        await session.begin(changes);
      } catch (err) {
        // SlotTakenError: the early record of a one-shot with participants was there first.
        if (err instanceof AlreadyCommittedError || err instanceof SlotTakenError) return this.#answers.oneShot(key, sessionId);
        throw err;
      }
      this.#metrics?.sessionsBegun.inc();
      await session.applyAll(changes);
      return this.#commitOpen(session);
    });
  }

  /**
   * Opens a session under `key`. Without a certain lease none opens (`LeaseLostError`), but a
   * key whose result is in the KV still gets `answer(result)`, from that one read: a result
   * needs no lease, and a client retrying after this instance stalled (a GC pause, a
   * SIGSTOP) gets its answer rather than a 503.
   */
  async #open<T>(request: OpenRequest, answer: (result: ResultRecord) => T): Promise<{ session: Session } | { answer: T }> {
    try {
      return { session: this.#table.open(request) };
    } catch (err) {
      if (!(err instanceof LeaseLostError)) throw err;
      const { result } = await readKey(this.#kv, request.key);
      if (result) return { answer: answer(result) };
      throw err;
    }
  }

  async get(key: string): Promise<SessionView | undefined> {
    await this.#landed(key);
    const session = this.#table.owned(key);
    if (session) return { key, state: session.state, stores: session.storeNames, owner: this.instanceId, startedAt: session.startedAt };
    let { record, result } = await readKey(this.#kv, key);
    if (record?.state === 'committing' && record.owner === this.instanceId && this.#recovery.owes(key)) {
      // Ours, past its commit point, and handed to recovery here: a commit answered early
      // whose result write failed (the KV was unreachable), or one interrupted. Its outcome
      // is decided; roll it forward now, so that a read after the answer shows the result.
      // (A session adopted from another instance is left to the passes: its roll-forward may
      // wait on a store that instance still locks, and a read must not wait with it.) While
      // the roll-forward cannot finish, the read shows the record, still `committing`.
      await this.#recovery.recoverKey(key);
      ({ record, result } = await readKey(this.#kv, key));
    }
    const view = result ? committedView(key, result) : record && recordView(key, record);
    if (!view) return undefined;
    const audit = await auditOf(this.#kv, key);
    return audit.length > 0 ? { ...view, audit } : view;
  }

  async list(query: { state?: ListableState; limit?: number; cursor?: string } = {}): Promise<SessionPage> {
    await this.#allLanded();
    return listSessions(this.#kv, query);
  }

  async resolve(key: string, action: 'retry' | 'abandon', by = 'anonymous'): Promise<SessionView | { key: string; state: 'abandoned' }> {
    const { record, revision, result } = await readKey(this.#kv, key);
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
    const resolved = (outcome: string) => this.#metrics?.sessionsResolved.inc({ action, outcome });
    const refused = (err: unknown): never => {
      resolved('refused');
      return raced(err);
    };
    // The audit record goes in the same transaction as the action: no action without its trace.
    const audit = auditOp(key, action, by, record, this.#retentionSeconds);
    if (action === 'abandon') {
      await this.#kv.txn([...(await deleteSessionOps(this.#kv, key, record, revision)), audit]).catch(refused);
      this.#logger.warn({ key, by, error: record.error }, 'failed session abandoned by an operator');
      resolved('abandoned');
      return { key, state: 'abandoned' };
    }
    const retried: SessionRecord = { ...record, state: 'committing', owner: this.instanceId, error: undefined };
    const newRevision = await this.#kv.txn([{ type: 'update', key: recordKeys.session(key), value: JSON.stringify(retried), revision }, audit]).catch(refused);
    this.#logger.warn({ key, by, error: record.error }, 'failed session retried by an operator');
    const outcome = await this.#recovery.retry(key, retried, newRevision);
    resolved(outcome.state);
    return this.#answers.fromRecovery(key, outcome);
  }

  instances(): Promise<InstanceView[]> {
    return listInstances(this.#kv, this.instanceId);
  }

  sessionLog(key: string): Promise<ChangeLog | undefined> {
    return sessionLog(this.#kv, key);
  }

  listStores(): StoreInfo[] {
    return this.#stores.list();
  }

  async addStore(definition: StoreDefinition, by = 'anonymous'): Promise<StoreInfo> {
    try {
      return await this.#stores.add(definition, by);
    } catch (err) {
      // A store that cannot open (bad options, server unreachable) is the request's problem.
      if (err instanceof CommitdError && err.code === 'STORE_OPEN_FAILED') throw new InvalidRequestError(err.message);
      throw err;
    }
  }

  /**
   * Removes a store unless a session needs it: one open here, or any session record in the
   * KV (`committing` and `failed` ones must still reach it; an `active` one would lose it).
   */
  async removeStore(name: string, by = 'anonymous'): Promise<void> {
    await this.#allLanded();
    if (!this.#stores.get(name) && !this.#stores.isCatalogued?.(name)) throw new StoreNotFoundError(name);
    for (const session of this.#table.values()) {
      if (session.storeNames.includes(name)) throw new SessionBusyError(session.key, this.instanceId, `store ${name} is in use by an open session`);
    }
    for (const entry of await this.#kv.list(recordKeys.sessions)) {
      const record = parseSession(entry.value);
      if (record.stores.includes(name)) {
        const key = entry.key.slice(recordKeys.sessions.length);
        throw new SessionBusyError(key, record.owner, `store ${name} is needed by this ${record.state} session; it cannot be removed until the session ends`);
      }
    }
    await this.#stores.remove(name, by);
  }

  async storeRemovals(): Promise<StoreRemoval[]> {
    return (await this.#stores.removals?.()) ?? [];
  }

  /**
   * Ready when the KV answers (within {@link READY_KV_MS}); lists each store up or down,
   * probed in parallel within {@link READY_STORE_MS}. A down store does not make the
   * instance unready: the other stores serve.
   */
  async ready(): Promise<ReadyView> {
    const stores = this.#stores.health?.(READY_STORE_MS) ?? Promise.resolve(this.#stores.list().map((s): StoreHealth => ({ name: s.name, status: 'up' })));
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        this.#kv.ping(),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`the KV did not answer within ${READY_KV_MS} ms`)), READY_KV_MS);
        }),
      ]);
    } catch (err) {
      throw new ServiceUnavailableError('the coordinator KV is unreachable', 1, { cause: err });
    } finally {
      clearTimeout(timer);
    }
    return { status: 'ok', stores: await stores };
  }

  /** SIGTERM: cancel open sessions, let committing ones finish, give up the lease. */
  async shutdown(timeoutMs = 10_000): Promise<void> {
    this.#table.close();
    for (const timer of this.#timers) clearInterval(timer);
    const pending = this.#table.values().map((session) =>
      session
        .run(async () => {
          if (session.acceptsChanges) await session.cancel('shutdown');
        })
        // A committed session's result may still be on its way to the KV.
        .then(() => session.ended),
    );
    const deadline = new Promise<void>((resolve) => setTimeout(resolve, timeoutMs).unref());
    await Promise.race([Promise.allSettled(pending), deadline]);
    await Promise.race([this.#recovery.close(), deadline]);
    await this.#instance.stop();
  }

  /**
   * A commit answered before its result record landed (`RecordSlot.release`) keeps its
   * session here until it has: a request for that key waits for it, so it sees the KV as
   * the answer left it (the result written, the record gone).
   */
  async #landed(key: string): Promise<void> {
    await this.#table.landing(key)?.ended;
  }

  /** Every answered commit's result write has landed (the early reply answers before it). */
  async #allLanded(): Promise<void> {
    await Promise.all(this.#table.values().flatMap((session) => (session.committedResult ? [session.ended] : [])));
  }

  /** Steps 4a–4e for a session this instance drives; the caller holds the session's turn. */
  async #commitOpen(session: Session): Promise<CommittedView> {
    const started = process.hrtime.bigint();
    const result = await session.commit().catch((err: unknown) => {
      // The one-shot's record was created first by a concurrent attempt: answer from it.
      if (err instanceof SlotTakenError) return undefined;
      throw err;
    });
    if (!result) return this.#answers.oneShot(session.key, session.sessionId);
    this.#metrics?.sessionsCommitted.inc();
    this.#metrics?.commitSeconds.observe(Number(process.hrtime.bigint() - started) / 1e9);
    return committedView(session.key, result);
  }

  #resolveStores(stores: readonly string[] | undefined): string[] {
    const names = stores ?? this.#stores.list().map((s) => s.name);
    if (names.length === 0) throw new InvalidRequestError('a session needs at least one store');
    if (new Set(names).size !== names.length) throw new InvalidRequestError('a store is named twice');
    const unknown = names.filter((name) => !this.#stores.get(name) && !this.#stores.isCatalogued?.(name));
    if (unknown.length > 0) throw new InvalidRequestError(`unknown store(s): ${unknown.join(', ')}`);
    const down = names.filter((name) => !this.#stores.get(name));
    if (down.length > 0) throw new ServiceUnavailableError(`store(s) ${down.join(', ')} are not open on this instance yet (see GET /v1/stores)`, 2);
    return [...names].sort(compareNames);
  }

  /**
   * Checks every change against its store type and canonical JSON.
   * @returns each change's canonical line: its length counts against the log limit
   */
  #validate(store: string, changes: readonly unknown[]): string[] {
    return changes.map((change, i) => {
      try {
        this.#stores.validateChange(store, change);
        return canonicalLine(change);
      } catch (err) {
        throw new InvalidRequestError(`changes[${i}] for store ${JSON.stringify(store)}: ${errorMessage(err)}`);
      }
    });
  }

  #cancelIdle(): void {
    for (const session of this.#table.values()) {
      if (!session.acceptsChanges || session.idleFor() < this.#idleTimeoutMs) continue;
      void session
        .run(async () => {
          if (session.acceptsChanges && session.idleFor() >= this.#idleTimeoutMs) await session.cancel('idle');
        })
        .catch((err: unknown) => session.logger.warn({ err }, 'idle cancel failed'));
    }
  }
}

/** How long a request waits for another instance's `committing` record to settle, by default. */
const DEFAULT_SETTLE_WAIT_MS = 2000;

/** The options actually given, so that spreading them keeps the defaults of the others. */
function withoutUndefined<T extends object>(options: T): Partial<T> {
  return Object.fromEntries(Object.entries(options).filter(([, value]) => value !== undefined)) as Partial<T>;
}

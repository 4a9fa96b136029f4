/**
 * Recovery and adoption (DESIGN.md "Session lifecycle"): finds records whose owner is gone
 * (or is this instance's earlier run), adopts them with a compare-revision write, rolls
 * `committing` ones forward from their log, deletes `active` ones, turns a roll-forward a
 * store rejects into `failed`, and resolves prepared transactions left without a session.
 * @module
 */
import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import { describeKey, keyBytes } from '../core/keys.ts';
import { errorMessage } from '../errors/catalogue.ts';
import type { Kv } from '../kv/kv.ts';
import { VersionMismatchError } from '../kv/errors.ts';
import type { Metrics } from '../metrics.ts';
import type { Store } from '../stores/api.ts';
import { isRejection } from './errors.ts';
import type { Failpoints } from './failpoints.ts';
import type { Instance } from './instance.ts';
import { deleteSessionOps, loadLog, parseResult, parseSession, recordKeys, type ResultRecord, type SessionRecord } from './records.ts';
import { SessionInterruptedError } from './session.ts';
import type { SessionTable } from './session-table.ts';

/** How recovery of one key ended. */
export type RecoveryOutcome =
  | { readonly state: 'committed'; readonly result: ResultRecord }
  | { readonly state: 'cancelled' | 'absent' }
  | { readonly state: 'failed'; readonly error: string }
  | { readonly state: 'busy'; readonly owner: string; readonly why: string }
  | { readonly state: 'pending'; readonly error: string };

/** What the KV holds for a key: its session record (with revision) or its result. */
export interface Existing {
  readonly record?: SessionRecord;
  readonly revision: number;
  readonly result?: ResultRecord;
}

/** Reads what the KV holds for `key`: the session record first, else the result. */
export async function readKey(kv: Kv, key: string): Promise<Existing> {
  const entry = await kv.get(recordKeys.session(key));
  if (entry) return { record: parseSession(entry.value), revision: entry.revision };
  const result = await kv.get(recordKeys.result(key));
  return { revision: 0, result: result ? parseResult(result.value) : undefined };
}

/** The stores recovery can find, by name. */
export interface StoreCatalogView {
  get(name: string): Store | undefined;
  list(): readonly { readonly name: string }[];
  /** True when the store is in the catalog, even if not open here (yet). */
  isCatalogued?(name: string): boolean;
}

/** Recovery's collaborators. */
export interface RecoveryDeps {
  readonly kv: Kv;
  readonly table: SessionTable;
  readonly stores: StoreCatalogView;
  readonly instance: Instance;
  readonly failpoints: Failpoints;
  readonly logger: Logger;
  readonly metrics: Metrics | undefined;
}

/** Recovery of one coordinator: passes, single keys, roll-forward. */
export class Recovery {
  readonly #deps: RecoveryDeps;
  readonly #recovering = new Map<string, Promise<RecoveryOutcome>>();
  /**
   * Keys whose commit this instance took past its commit point and then handed to recovery
   * (its result write failed, or the commit was interrupted): their client may already hold
   * the answer, so a read here rolls them forward first (`owes`). A key leaves the set once
   * a recovery of it ends in anything but `pending`, or its record is gone.
   */
  readonly #owed = new Set<string>();
  #pass: Promise<void> | undefined;
  #closed = false;

  constructor(deps: RecoveryDeps) {
    this.#deps = deps;
  }

  /** True when this instance handed `key`'s decided commit to recovery and it has not ended yet. */
  owes(key: string): boolean {
    return this.#owed.has(key);
  }

  /** True while a recovery of `key` runs here. */
  isRecovering(key: string): boolean {
    return this.#recovering.has(key);
  }

  /** No pass starts from now on; resolves when the running one (if any) ended. */
  async close(): Promise<void> {
    this.#closed = true;
    await this.#pass;
  }

  /**
   * One recovery pass: adopt every session whose owner's instance is gone (or is this
   * instance's earlier run), roll `committing` ones forward and cancel `active` ones, then
   * resolve orphaned prepared transactions of stores that have them.
   */
  recoverOnce(): Promise<void> {
    this.#pass ??= this.#recoverPass().finally(() => {
      this.#pass = undefined;
    });
    return this.#pass;
  }

  /** Recovers one key (single flight: concurrent callers share the run). */
  recoverKey(key: string): Promise<RecoveryOutcome> {
    return this.#singleFlight(key, async () => {
      const { kv, table, instance, logger } = this.#deps;
      const { record, revision, result } = await readKey(kv, key);
      if (result) return { state: 'committed', result };
      if (!record) return { state: 'absent' };
      if (table.has(key)) return { state: 'busy', owner: instance.id, why: 'the session is open here' };
      if (record.owner !== instance.id && (await instance.isAlive(record.owner))) {
        return { state: 'busy', owner: record.owner, why: `the session is ${record.state} there` };
      }
      if (record.state === 'failed') return { state: 'failed', error: record.error ?? 'roll-forward failed' };
      const adopted = await this.adopt(key, record, revision);
      if (!adopted) return { state: 'busy', owner: record.owner, why: 'another instance adopted it first' };
      await this.#deps.failpoints.fire('recovery.afterAdopt');
      if (record.state === 'active') {
        // Nothing of an active session was committed anywhere: cancel it; a retry starts
        // afresh. A participant may hold its try: it hears cancel before the record goes,
        // and while it cannot be reached the record stays for the next pass.
        try {
          await this.cancelParticipants(key, record);
        } catch (err) {
          logger.warn({ err, key }, 'a participant did not accept the cancel of an abandoned session; the next pass retries');
          return { state: 'pending', error: errorMessage(err) };
        }
        await kv.txn(await deleteSessionOps(kv, key, record, adopted.revision));
        this.#deps.metrics?.sessionsRecovered.inc({ outcome: 'cancelled' });
        return { state: 'cancelled' };
      }
      return this.#rollForward(key, adopted.record, adopted.revision);
    });
  }

  /**
   * Sends cancel, for the record's attempt, to each of its stores that is a participant:
   * an `active` record of a dead instance may have sent a try before it died.
   */
  async cancelParticipants(key: string, record: SessionRecord): Promise<void> {
    if (record.attempt === undefined) return;
    for (const name of record.stores) {
      const store = this.#deps.stores.get(name);
      if (store?.cancelAttempt) await store.cancelAttempt(keyBytes(key), record.attempt);
      else if (!store) this.#deps.logger.warn({ key, store: name }, 'a store of an abandoned session is not configured here: it is not cancelled');
    }
  }

  /**
   * A worker resumes the `active` record of a dead instance: the dead one's try (if any) is
   * cancelled and the resumed session gets an attempt of its own, written before it begins,
   * so its try is never taken for the dead one's.
   */
  async renewAttempt(key: string, adopted: { record: SessionRecord; revision: number }): Promise<{ record: SessionRecord; revision: number }> {
    const participants = adopted.record.stores.some((name) => this.#deps.stores.get(name)?.cancelAttempt !== undefined);
    if (!participants) return adopted;
    await this.cancelParticipants(key, adopted.record);
    const record: SessionRecord = { ...adopted.record, attempt: randomUUID() };
    const revision = await this.#deps.kv.update(recordKeys.session(key), JSON.stringify(record), adopted.revision);
    return { record, revision };
  }

  /** An operator's retry of a `failed` session, already turned `committing` at `revision`. */
  retry(key: string, record: SessionRecord, revision: number): Promise<RecoveryOutcome> {
    // Not a recovery outcome: the session's one was counted when it turned failed.
    return this.#singleFlight(key, () => this.#rollForward(key, record, revision, false));
  }

  /** Schedules recovery of a key whose commit was interrupted past its commit point. */
  schedule(key: string): void {
    this.#owed.add(key);
    setTimeout(
      () => void this.recoverKey(key).catch((err: unknown) => this.#deps.logger.warn({ err, key }, 'recovery after an interrupted commit failed')),
      100,
    ).unref();
  }

  /** Takes ownership with a compare-revision write, so only one adopter wins. */
  async adopt(key: string, record: SessionRecord, revision: number): Promise<{ record: SessionRecord; revision: number } | undefined> {
    const { kv, instance, logger } = this.#deps;
    if (record.owner === instance.id) return { record, revision };
    const adopted = { ...record, owner: instance.id };
    try {
      const newRevision = await kv.update(recordKeys.session(key), JSON.stringify(adopted), revision);
      logger.info({ key, from: record.owner }, 'adopted a session of a dead instance');
      return { record: adopted, revision: newRevision };
    } catch (err) {
      if (err instanceof VersionMismatchError) return undefined;
      throw err;
    }
  }

  /** Decides the prepared transactions that stores hold without a session here. */
  async resolveOrphans(): Promise<void> {
    const { kv, table, instance, stores } = this.#deps;
    for (const info of stores.list()) {
      const store = stores.get(info.name);
      if (!store?.resolveOrphans) continue;
      await store.resolveOrphans(async (keyOfOrphan) => {
        const key = describeKey(keyOfOrphan);
        if (table.has(key)) return 'keep';
        const { record, result } = await readKey(kv, key);
        if (result || record?.state === 'committing') return 'commit';
        if (record && record.owner !== instance.id && (await instance.isAlive(record.owner))) return 'keep';
        return 'rollback';
      });
    }
  }

  async #recoverPass(): Promise<void> {
    if (this.#closed) return;
    const { kv, table, instance, logger } = this.#deps;
    try {
      const alive = new Map<string, boolean>([[instance.id, true]]);
      // Oldest revision first: a record last written at its commit point replays in commit
      // order, so sessions of one sqlite commit group lost together apply as they first did.
      const entries = (await kv.list(recordKeys.sessions)).sort((x, y) => x.revision - y.revision);
      const listed = new Set(entries.map((entry) => entry.key.slice(recordKeys.sessions.length)));
      for (const key of this.#owed) if (!listed.has(key)) this.#owed.delete(key);
      for (const entry of entries) {
        const key = entry.key.slice(recordKeys.sessions.length);
        const record = parseSession(entry.value);
        if (this.#closed || record.state === 'failed' || table.has(key) || this.#recovering.has(key)) continue;
        if (record.owner !== instance.id) {
          if (!alive.has(record.owner)) alive.set(record.owner, await instance.isAlive(record.owner));
          if (alive.get(record.owner)) continue;
        }
        const outcome = await this.recoverKey(key);
        logger.info({ key, outcome: outcome.state }, 'recovered a session');
      }
      await this.resolveOrphans();
    } catch (err) {
      logger.warn({ err }, 'recovery pass failed; the next one retries');
    }
  }

  /** Roll forward a `committing` session from its log: recover every store, re-apply, commit. */
  async #rollForward(key: string, record: SessionRecord, revision: number, countOutcome = true): Promise<RecoveryOutcome> {
    const { kv, table, stores, metrics, logger } = this.#deps;
    const missing = record.stores.filter((name) => !stores.get(name));
    // A store the catalog defines but that is not open here yet: wait for it, never fail.
    const opening = missing.filter((name) => stores.isCatalogued?.(name));
    if (opening.length > 0) {
      logger.warn({ key, stores: opening }, 'roll-forward waits for catalog stores to open here');
      return { state: 'pending', error: `store(s) ${opening.join(', ')} are not open here yet` };
    }
    if (missing.length > 0) return this.#markFailed(key, record, revision, `store(s) ${missing.join(', ')} are not configured here`, countOutcome);
    const log = await loadLog(kv, key, record);
    const session = table.open({ key, names: record.stores, oneShot: record.oneShot ?? false, adopted: { record, revision }, recoverOnInterrupt: false });
    try {
      const result = await session.rollForward(log);
      if (countOutcome) metrics?.sessionsRecovered.inc({ outcome: 'committed' });
      metrics?.sessionsCommitted.inc();
      return { state: 'committed', result };
    } catch (err) {
      const cause = err instanceof SessionInterruptedError ? err.cause : err;
      if (isRejection(cause)) return this.#markFailed(key, record, session.revision, errorMessage(cause), countOutcome);
      logger.warn({ err: cause, key }, 'roll-forward did not finish; recovery retries it');
      return { state: 'pending', error: errorMessage(cause) };
    }
  }

  async #markFailed(key: string, record: SessionRecord, revision: number, error: string, countOutcome: boolean): Promise<RecoveryOutcome> {
    const failed: SessionRecord = { ...record, state: 'failed', error };
    await this.#deps.kv.update(recordKeys.session(key), JSON.stringify(failed), revision);
    this.#deps.logger.error({ key, error }, 'roll-forward rejected by a store: session failed, awaiting an operator');
    if (countOutcome) this.#deps.metrics?.sessionsRecovered.inc({ outcome: 'failed' });
    return { state: 'failed', error };
  }

  #singleFlight(key: string, work: () => Promise<RecoveryOutcome>): Promise<RecoveryOutcome> {
    const running = this.#recovering.get(key);
    if (running) return running;
    const flight = work()
      .then((outcome) => {
        if (outcome.state !== 'pending') this.#owed.delete(key);
        return outcome;
      })
      .finally(() => this.#recovering.delete(key));
    this.#recovering.set(key, flight);
    return flight;
  }
}

/**
 * Answers for keys without a session open here: a key already committed, held by another
 * instance, left by a dead one, or gone. Each reads the KV and, where the key's fate is
 * recovery's, lets recovery decide first.
 * @module
 */
import { compareNames } from '../core/multi-committer.ts';
import type { Kv } from '../kv/kv.ts';
import type { Metrics } from '../metrics.ts';
import { KeyReusedError, ServiceUnavailableError, SessionBusyError, SessionFailedError, SessionNotFoundError } from './errors.ts';
import type { Instance } from './instance.ts';
import { readKey, type Recovery, type RecoveryOutcome } from './recovery.ts';
import { recordKeys, type ResultRecord, type SessionRecord } from './records.ts';
import { recordChanged } from './settle.ts';
import type { SessionTable } from './session-table.ts';
import type { ActiveView, CommittedView, SessionView } from './types.ts';

/** The answer to a commit, and to every replay of it. */
export function committedView(key: string, result: ResultRecord): CommittedView {
  return { key, state: 'committed', sessionId: result.sessionId, stores: result.stores, committedAt: result.committedAt };
}

/** A result that was already there, served again (the reply says `Idempotent-Replayed: true`). */
export function replayedView(key: string, result: ResultRecord): CommittedView {
  return { ...committedView(key, result), replayed: true };
}

/** What `GET /v1/sessions/:key` shows for a record in the KV. */
export function recordView(key: string, record: SessionRecord): SessionView {
  return {
    key,
    state: record.state,
    stores: record.stores,
    owner: record.owner,
    startedAt: record.startedAt,
    ...(record.state !== 'active' && record.sessionId ? { sessionId: record.sessionId } : {}),
    ...(record.error ? { error: record.error } : {}),
  };
}

/** True when both lists name the same stores, in any order. */
export function sameNames(a: readonly string[], b: readonly string[]): boolean {
  const sortedB = [...b].sort(compareNames);
  return a.length === b.length && [...a].sort(compareNames).every((name, i) => name === sortedB[i]);
}

/** The answers' collaborators. */
export interface AnswerDeps {
  readonly kv: Kv;
  readonly table: SessionTable;
  readonly recovery: Recovery;
  readonly instance: Instance;
  readonly metrics: Metrics | undefined;
  /**
   * How long a request waits for another live instance's `committing` record to settle
   * before it answers `session_busy` (see `settle.ts`); 0 answers at once.
   */
  readonly settleWaitMs: number;
}

/** Answers for keys without a live session here. */
export class KeyAnswers {
  readonly #deps: AnswerDeps;

  constructor(deps: AnswerDeps) {
    this.#deps = deps;
  }

  /**
   * The key's record or result. A `committing` record of another live instance is waited on
   * first (up to `settleWaitMs`): its owner may have answered already (the early reply) and
   * its result be on its way, so that a retry here gets the owner's answer, not a
   * `session_busy`. A record still `committing` after the wait is answered as before.
   */
  async #read(key: string): ReturnType<typeof readKey> {
    const { kv, instance, settleWaitMs } = this.#deps;
    const existing = await readKey(kv, key);
    const { record } = existing;
    if (settleWaitMs <= 0 || record?.state !== 'committing' || record.owner === instance.id) return existing;
    if (!(await instance.isAlive(record.owner))) return existing;
    await recordChanged(kv, recordKeys.session(key), existing.revision, settleWaitMs);
    return readKey(kv, key);
  }

  /** A begin found the key's record or result already there. */
  async begin(key: string, names: readonly string[]): Promise<ActiveView | CommittedView> {
    const { table, recovery, instance, metrics } = this.#deps;
    const { record, revision, result } = await this.#read(key);
    if (result) return this.beginCommitted(key, names, result);
    if (!record) throw new ServiceUnavailableError(`session ${key} changed while beginning; retry`, 1);
    if (record.owner !== instance.id && (await instance.isAlive(record.owner))) {
      throw new SessionBusyError(key, record.owner, `the session is ${record.state}`);
    }
    if (record.state !== 'active') return this.fromRecovery(key, await recovery.recoverKey(key));
    if (!sameNames(record.stores, names)) throw new KeyReusedError(key, `with stores ${record.stores.join(', ')}`);
    const taken = await recovery.adopt(key, record, revision);
    if (!taken) throw new SessionBusyError(key, record.owner, 'another instance adopted it first');
    const adopted = await recovery.renewAttempt(key, taken);
    // Work a dead owner prepared before its commit point must not commit with the resumed session.
    await recovery.resolveOrphans();
    table.assertFree(key);
    const session = table.open({ key, names, oneShot: false, adopted, recoverOnInterrupt: true });
    await session.run(() => session.begin());
    metrics?.sessionsBegun.inc();
    metrics?.sessionsRecovered.inc({ outcome: 'resumed' });
    return { key, state: 'active', recovery: true, stores: names };
  }

  /** A begin of a key whose result is already read: the same stores get its replay. */
  beginCommitted(key: string, names: readonly string[], result: ResultRecord): CommittedView {
    if (sameNames(Object.keys(result.stores), names)) return replayedView(key, result);
    throw new KeyReusedError(key, `with stores ${Object.keys(result.stores).join(', ')}`);
  }

  /** A one-shot of a key whose result is already read: the same changes get its replay. */
  oneShotCommitted(key: string, sessionId: string, result: ResultRecord): CommittedView {
    if (result.sessionId === sessionId) return replayedView(key, result);
    throw new KeyReusedError(key, 'with other changes');
  }

  /** A one-shot commit found the key taken: the same changes get the key's answer. */
  async oneShot(key: string, sessionId: string): Promise<CommittedView> {
    const { record, result } = await this.#read(key);
    if (result) return this.oneShotCommitted(key, sessionId, result);
    if (!record) throw new KeyReusedError(key, 'and committed; its result is no longer retained');
    if (record.sessionId !== sessionId) throw new KeyReusedError(key, 'with other stores or changes');
    const outcome = await this.#deps.recovery.recoverKey(key);
    // The early record of a one-shot with participants, left before its commit point.
    if (outcome.state === 'cancelled')
      throw new ServiceUnavailableError(`an earlier attempt of ${key} stopped before its commit point and was cancelled; retry`, 1);
    return this.fromRecovery(key, outcome);
  }

  /** A commit of a key with no session open here: whatever recovery makes of it. */
  async commit(key: string): Promise<CommittedView> {
    const { result } = await this.#read(key);
    if (result) return replayedView(key, result);
    return this.fromRecovery(key, await this.#deps.recovery.recoverKey(key));
  }

  /** A cancel of a key with no session open here. */
  async cancel(key: string): Promise<{ key: string; state: 'cancelled' }> {
    const { record, result } = await this.#read(key);
    if (result) throw new SessionBusyError(key, this.#deps.instance.id, 'the session is already committed');
    if (!record) throw new SessionNotFoundError(key);
    if (record.state !== 'active') throw new SessionBusyError(key, record.owner, `the session is ${record.state}`);
    const outcome = await this.#deps.recovery.recoverKey(key);
    if (outcome.state === 'cancelled' || outcome.state === 'absent') return { key, state: 'cancelled' };
    return this.fromRecovery(key, outcome).then(() => {
      throw new SessionBusyError(key, this.#deps.instance.id, 'the session committed');
    });
  }

  /** Why a key has no open session here: the error to answer with. */
  async notOpen(key: string): Promise<Error> {
    const { record, result } = await this.#read(key);
    if (result) return new KeyReusedError(key, 'and committed: no changes can be added');
    if (record)
      return new SessionBusyError(
        key,
        record.owner,
        `the session is ${record.state} ${record.owner === this.#deps.instance.id ? 'and not open here' : 'on another instance'}`,
      );
    return new SessionNotFoundError(key);
  }

  /** Turns the outcome of a recovery into the answer of a request about that key. */
  async fromRecovery(key: string, outcome: RecoveryOutcome): Promise<CommittedView> {
    switch (outcome.state) {
      case 'committed':
        return committedView(key, outcome.result);
      case 'busy':
        throw new SessionBusyError(key, outcome.owner, outcome.why);
      case 'failed':
        throw new SessionFailedError(key, outcome.error);
      case 'pending':
        throw new ServiceUnavailableError(`session ${key} is past its commit point and will complete (${outcome.error}); retry`, 1);
      default:
        throw new SessionNotFoundError(key);
    }
  }
}

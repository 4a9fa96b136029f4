/**
 * The sessions this instance drives, by key: opening them (within the cap, only while the
 * instance lease holds), serving them from memory only while that lease certainly holds,
 * and forgetting them when they end.
 * @module
 */
import { randomUUID } from 'node:crypto';
import type { SessionHasher } from '../core/session-id.ts';
import type { Metrics } from '../metrics.ts';
import type { Store, StoreSession } from '../stores/api.ts';
import { LeaseLostError, ServiceUnavailableError, SessionBusyError } from './errors.ts';
import type { Instance } from './instance.ts';
import type { SessionRecord } from './records.ts';
import { Session, type SessionDeps, type SessionEnd } from './session.ts';

/** The stores a session can be opened on. */
export interface StoreLookup {
  get(name: string): Store | undefined;
}

/** What a new session needs from its opener. */
export interface OpenRequest {
  readonly key: string;
  /** Store names, each known to the catalog. */
  readonly names: readonly string[];
  readonly oneShot: boolean;
  readonly hasher?: SessionHasher;
  readonly adopted?: { readonly record: SessionRecord; readonly revision: number };
  /**
   * Whether an interruption past the commit point schedules recovery of the key (true for
   * sessions serving requests; a roll-forward reports to its recovery pass instead).
   */
  readonly recoverOnInterrupt: boolean;
  /** Bytes of changes the session holds from the start (a one-shot's), taken from the log budget. */
  readonly logBytes?: number;
}

/** The table's collaborators. */
export interface SessionTableDeps {
  readonly session: SessionDeps;
  readonly stores: StoreLookup;
  readonly instance: Instance;
  readonly maxOpen: number;
  readonly metrics: Metrics | undefined;
  /** Called when a session stopped past its commit point: recovery must finish the key. */
  readonly scheduleRecovery: (key: string) => void;
}

/** The sessions this instance drives. */
export class SessionTable {
  readonly #deps: SessionTableDeps;
  readonly #sessions = new Map<string, Session>();
  /** Sessions dropped with the lease after their commit was answered, until their result write settles. */
  readonly #landing = new Map<string, Session>();
  #closed = false;

  constructor(deps: SessionTableDeps) {
    this.#deps = deps;
  }

  /** How many sessions this instance drives now. */
  get size(): number {
    return this.#sessions.size;
  }

  /** True if a session under `key` is open here (whether or not the lease still holds). */
  has(key: string): boolean {
    return this.#sessions.has(key);
  }

  /** The open sessions, for sweeps. */
  values(): Session[] {
    return [...this.#sessions.values()];
  }

  /**
   * The session under `key` this instance drives, served from memory — no KV read — only
   * while the instance's lease certainly holds: until then no other instance can have
   * adopted the record, so only this process changes it and memory is its truth. Past the
   * lease (even if the expiry timer has not fired yet, say after the event loop was
   * blocked), every session is dropped first and the caller falls back to the KV.
   */
  owned(key: string): Session | undefined {
    // An overdue loss is reported here, and the lease-lost handler drops every session first.
    if (this.#sessions.has(key)) this.#deps.instance.holdsLease();
    return this.#sessions.get(key);
  }

  /**
   * The session under `key` whose commit was answered before its result write landed (the
   * early reply), also after the lease was lost: a request about the key waits for that
   * write instead of reading a KV that does not show the result yet.
   */
  landing(key: string): Session | undefined {
    const session = this.owned(key) ?? this.#landing.get(key);
    return session?.committedResult ? session : undefined;
  }

  /** Throws `session_busy` if a session under `key` is open here. */
  assertFree(key: string): void {
    if (this.#sessions.has(key))
      throw new SessionBusyError(key, this.#deps.session.instanceId, 'a session under this key is open; cancel it or wait for its idle timeout');
  }

  /** Opens a session (not begun yet) and enters it in the table. */
  open(request: OpenRequest): Session {
    if (this.#closed) throw new ServiceUnavailableError('commitd is shutting down', 5);
    // Without a live lease other instances may take a new record for a dead one's at once.
    if (!this.#deps.instance.holdsLease()) throw new LeaseLostError();
    if (this.#sessions.size >= this.#deps.maxOpen) throw new ServiceUnavailableError(`too many open sessions (${this.#deps.maxOpen})`, 1);
    const heldBytes = request.logBytes ?? 0;
    this.#deps.session.logBudget.reserve(heldBytes, `the changes of session ${request.key}`);
    let session: Session;
    try {
      const attempt = request.adopted?.record.attempt ?? randomUUID();
      const opened = request.names.map((name) => [name, this.#deps.stores.get(name) as Store] as const);
      const stores = new Map<string, StoreSession>(opened.map(([name, store]) => [name, store.session({ attempt })]));
      session = new Session(this.#deps.session, {
        key: request.key,
        stores,
        attempt,
        participants: opened.filter(([, store]) => store.cancelAttempt !== undefined).map(([name]) => name),
        oneShot: request.oneShot,
        hasher: request.hasher,
        adopted: request.adopted,
        heldBytes,
        onEnd: (ended, end) => this.#ended(ended, end, request.recoverOnInterrupt),
      });
    } catch (err) {
      this.#deps.session.logBudget.release(heldBytes);
      throw err;
    }
    this.#sessions.set(request.key, session);
    this.#deps.metrics?.sessionsOpen.set(this.#sessions.size);
    return session;
  }

  /** No session opens from now on (shutdown). */
  close(): void {
    this.#closed = true;
  }

  /** The lease is gone: another instance may adopt our sessions, so stop driving them. */
  relinquishAll(): void {
    // Dropped at once, before the stores are released: the caller may be a lookup that
    // must not find them.
    const sessions = this.values();
    this.#sessions.clear();
    this.#deps.metrics?.sessionsOpen.set(0);
    for (const session of sessions) {
      if (session.committedResult) this.#landing.set(session.key, session);
      void session.relinquish('lease lost').catch(() => undefined);
      session.logger.error('lease lost: stopped driving this session');
    }
  }

  #ended(session: Session, end: SessionEnd, recoverOnInterrupt: boolean): void {
    if (this.#sessions.get(session.key) === session) this.#sessions.delete(session.key);
    if (this.#landing.get(session.key) === session) this.#landing.delete(session.key);
    this.#deps.metrics?.sessionsOpen.set(this.#sessions.size);
    if (end.outcome === 'cancelled') {
      this.#deps.metrics?.sessionsCancelled.inc({ reason: end.reason });
      session.logger.info({ reason: end.reason }, 'session cancelled');
    }
    if (end.outcome === 'recover' && recoverOnInterrupt) this.#deps.scheduleRecovery(session.key);
  }
}

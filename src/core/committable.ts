/**
 * The one interface every datastore implements to take part in a session.
 * @module
 */

/**
 * A datastore that can take part in a session. Four methods carry the whole idea:
 * extend by composition (see `src/stores/helper.ts`), not by widening this.
 */
export interface Committable {
  /** Starts a session: the store begins allowing writes. */
  begin(key: Uint8Array): Promise<void>;
  /** Called instead of `begin` after a crash interrupted a session; `commit` follows. */
  beginRecovery(key: Uint8Array): Promise<void>;
  /** Finishes the session; returns an ID derived deterministically from the applied changes. */
  commit(key: Uint8Array): Promise<Uint8Array>;
  /** Resets the store to its state before `begin`. Safe to call in any state. */
  cancel(): Promise<void>;
}

/** A logger compatible with pino's signature; the core logs only what it cannot throw. */
export interface CommitterLogger {
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

/** A logger that drops everything. */
export const silentLogger: CommitterLogger = { warn() {}, error() {} };

/**
 * The global cap on the bytes held by the change logs of every session this instance
 * drives (DESIGN "The boundary" 3), beside the per-session cap.
 *
 * What is counted: the same bytes as the per-session cap — each change's canonical JSON
 * line without its newline (UTF-16 code units, so about a byte per ASCII character) —
 * of interactive sessions from the change request that adds them, and of one-shots from
 * their start, until the session ends in any way. What is not: the overhead of the JS
 * objects the parsed changes live in (more per byte for many small values than for long
 * strings), the request bodies fastify buffers (bounded by `bodyLimit` per request), what
 * the stores buffer themselves, and the logs of roll-forwards recovery runs (read back from
 * the KV; refusing them would stall recovery). Issue 12 measured about one byte of RSS per
 * byte counted (six sessions of 48 MiB: +298 MB), so the 256 MiB default keeps RSS within a
 * small multiple of it; lower `openLogBytes` on small hosts.
 * @module
 */
import type { Metrics } from '../metrics.ts';
import { ServiceUnavailableError } from './errors.ts';

/** Bytes held by open sessions' change logs, within a cap. */
export class LogBudget {
  readonly cap: number;
  readonly #metrics: Metrics | undefined;
  #held = 0;

  constructor(cap: number, metrics?: Metrics) {
    this.cap = cap;
    this.#metrics = metrics;
    this.#metrics?.openLogBytes.set(0);
  }

  /** Bytes held now. */
  get held(): number {
    return this.#held;
  }

  /**
   * Takes `bytes` from the budget, or throws `503` (nothing taken) when they would push
   * the total past the cap: other sessions must end first.
   */
  reserve(bytes: number, what: string): void {
    if (this.#held + bytes > this.cap) {
      throw new ServiceUnavailableError(
        `${what} would push the change logs held by open sessions past their limit of ${this.cap} bytes (${this.#held} held); retry when sessions have ended`,
        1,
      );
    }
    this.#set(this.#held + bytes);
  }

  /** Gives back what {@link reserve} took. */
  release(bytes: number): void {
    this.#set(this.#held - bytes);
  }

  #set(held: number): void {
    this.#held = held;
    this.#metrics?.openLogBytes.set(held);
  }
}

/**
 * A FIFO async mutex: waiters are served in arrival order, so no session starves.
 * @module
 */
export class FifoMutex {
  #held = false;
  readonly #waiters: Array<() => void> = [];

  async acquire(): Promise<void> {
    if (!this.#held) {
      this.#held = true;
      return;
    }
    await new Promise<void>((wake) => this.#waiters.push(wake));
  }

  /** Hands the lock to the next waiter, still held, so no newcomer can jump the queue. */
  release(): void {
    const next = this.#waiters.shift();
    if (next) next();
    else this.#held = false;
  }
}

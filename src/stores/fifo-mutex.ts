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

  /** Takes the lock only if it is free at once. */
  tryAcquire(): boolean {
    if (this.#held) return false;
    this.#held = true;
    return true;
  }

  /** How many are queued behind the holder. */
  get waiting(): number {
    return this.#waiters.length;
  }

  /** Hands the lock to the next waiter, still held, so no newcomer can jump the queue. */
  release(): void {
    const next = this.#waiters.shift();
    if (next) next();
    else this.#held = false;
  }
}

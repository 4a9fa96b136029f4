/**
 * A committable wrapper that records every call into a shared journal and can be told to
 * fail at one method: the fault a real store cannot produce on demand.
 */
import type { Committable } from '../../src/core/committable.ts';

export type Method = 'begin' | 'beginRecovery' | 'commit' | 'cancel';

export class Recording<C extends Committable = Committable> implements Committable {
  failOn: Method | undefined;
  onBegin: (() => Promise<void>) | undefined;

  constructor(
    readonly name: string,
    readonly inner: C,
    readonly journal: string[],
  ) {}

  async begin(key: Uint8Array): Promise<void> {
    this.#record('begin');
    await this.onBegin?.();
    return this.inner.begin(key);
  }

  async beginRecovery(key: Uint8Array): Promise<void> {
    this.#record('beginRecovery');
    return this.inner.beginRecovery(key);
  }

  async commit(key: Uint8Array): Promise<Uint8Array> {
    this.#record('commit');
    return this.inner.commit(key);
  }

  async cancel(): Promise<void> {
    this.#record('cancel');
    return this.inner.cancel();
  }

  #record(method: Method): void {
    this.journal.push(`${this.name}.${method}`);
    if (this.failOn === method) throw new Error(`${this.name}: injected ${method} failure`);
  }
}

/**
 * Group commit: writes issued while earlier ones are in flight wait and leave together, as
 * one backend transaction. A write issued while nothing is in flight leaves at once, so one
 * writer alone pays no added latency. Each member keeps its own outcome: the backend's
 * `send` settles every member separately, so one member's failed condition fails it alone.
 * @module
 */

/** One write waiting to join a group. */
export interface GroupMember {
  /** Every key the write reads or writes: members of one group never share a key. */
  readonly keys: readonly string[];
  /** Bytes it adds to a group's request (values and keys). */
  readonly bytes: number;
}

/** One member's outcome. */
export type Settled<R> = { readonly ok: true; readonly value: R } | { readonly ok: false; readonly error: unknown };

/** How groups are formed and sent. */
export interface GroupCommitOptions<M extends GroupMember, R> {
  /**
   * Sends `members` as one group and settles each, in order. A rejection settles every
   * member with that error (the group as a whole got no answer).
   */
  readonly send: (members: readonly M[]) => Promise<readonly Settled<R>[]>;
  /** Most members in one group. */
  readonly maxMembers: number;
  /** Most bytes in one group; a larger member leaves alone. */
  readonly maxBytes: number;
  /** Groups in flight at once; later writes wait for one to settle. */
  readonly maxInFlight: number;
  /** Called with the size of every group sent. */
  readonly onGroup?: (size: number) => void;
}

interface Waiting<M, R> {
  readonly member: M;
  readonly resolve: (value: R) => void;
  readonly reject: (error: unknown) => void;
}

/** Forms groups of concurrent writes and sends them through one backend. */
export class GroupCommit<M extends GroupMember, R> {
  readonly #options: GroupCommitOptions<M, R>;
  #queue: Waiting<M, R>[] = [];
  #inFlight = 0;

  constructor(options: GroupCommitOptions<M, R>) {
    if (options.maxMembers < 1 || options.maxInFlight < 1) throw new RangeError('a group needs at least one member and one slot in flight');
    this.#options = options;
  }

  /** Groups currently in flight (for tests and metrics). */
  get inFlight(): number {
    return this.#inFlight;
  }

  /** Writes `member` with the next group (at once when nothing is in flight). */
  submit(member: M): Promise<R> {
    return new Promise<R>((resolve, reject) => {
      this.#queue.push({ member, resolve, reject });
      this.#drain();
    });
  }

  /** Sends groups while slots are free and writes wait. */
  #drain(): void {
    while (this.#inFlight < this.#options.maxInFlight && this.#queue.length > 0) {
      const group = this.#nextGroup();
      this.#inFlight += 1;
      this.#options.onGroup?.(group.length);
      void this.#send(group).finally(() => {
        this.#inFlight -= 1;
        this.#drain();
      });
    }
  }

  /**
   * Takes the oldest waiting writes that fit one group: up to `maxMembers` and `maxBytes`,
   * no key twice. A write that does not fit keeps its place for the next group.
   */
  #nextGroup(): Waiting<M, R>[] {
    const group: Waiting<M, R>[] = [];
    const rest: Waiting<M, R>[] = [];
    const keys = new Set<string>();
    let bytes = 0;
    for (const waiting of this.#queue) {
      const { member } = waiting;
      const fits =
        group.length === 0 ||
        (group.length < this.#options.maxMembers && bytes + member.bytes <= this.#options.maxBytes && !member.keys.some((key) => keys.has(key)));
      if (!fits) {
        rest.push(waiting);
        continue;
      }
      group.push(waiting);
      bytes += member.bytes;
      for (const key of member.keys) keys.add(key);
    }
    this.#queue = rest;
    return group;
  }

  async #send(group: readonly Waiting<M, R>[]): Promise<void> {
    let settled: readonly Settled<R>[];
    try {
      settled = await this.#options.send(group.map((waiting) => waiting.member));
    } catch (error) {
      for (const waiting of group) waiting.reject(error);
      return;
    }
    for (const [index, waiting] of group.entries()) {
      const outcome = settled[index];
      if (outcome === undefined) waiting.reject(new Error('group commit: the backend settled fewer members than it was sent'));
      else if (outcome.ok) waiting.resolve(outcome.value);
      else waiting.reject(outcome.error);
    }
  }
}

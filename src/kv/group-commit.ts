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
  /**
   * Groups in flight at once; later writes wait for one to settle. A write never leaves
   * while an earlier write of one of its keys is in flight, so writes of one key reach the
   * backend in the order they were issued.
   */
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
  /** The keys of the groups in flight (no key is in two of them). */
  readonly #busyKeys = new Set<string>();

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
      if (group.length === 0) return;
      this.#inFlight += 1;
      const keys = group.flatMap((waiting) => waiting.member.keys);
      for (const key of keys) this.#busyKeys.add(key);
      this.#options.onGroup?.(group.length);
      void this.#send(group).finally(() => {
        this.#inFlight -= 1;
        for (const key of keys) this.#busyKeys.delete(key);
        this.#drain();
      });
    }
  }

  /**
   * Takes the oldest waiting writes that fit one group: up to `maxMembers` and `maxBytes`,
   * no key twice, none of the keys in flight. A write that does not fit keeps its place for
   * the next group, and so does every later write of one of its keys.
   */
  #nextGroup(): Waiting<M, R>[] {
    const group: Waiting<M, R>[] = [];
    const rest: Waiting<M, R>[] = [];
    const keys = new Set<string>();
    /** Keys of the writes left waiting: a later write of one of them waits too. */
    const held = new Set<string>();
    let bytes = 0;
    for (const waiting of this.#queue) {
      const { member } = waiting;
      const free = !member.keys.some((key) => keys.has(key) || held.has(key) || this.#busyKeys.has(key));
      const fits = free && (group.length === 0 || (group.length < this.#options.maxMembers && bytes + member.bytes <= this.#options.maxBytes));
      if (!fits) {
        rest.push(waiting);
        for (const key of member.keys) held.add(key);
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

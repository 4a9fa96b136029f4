/**
 * The ordering guard of the etcd KV (as etcd's Go `clientv3/ordering`): the highest store
 * revision a client has seen, and serializable reads that must not answer from before it.
 * @module
 */

/** A response that carries etcd's header: its `revision` is the store revision it reflects. */
export interface RevisionedResponse {
  readonly header: { readonly revision: string | number };
}

/** The highest store revision one client has seen in a response header. Never goes down. */
export class RevisionFloor {
  #highest = 0;

  get highest(): number {
    return this.#highest;
  }

  /** Records the revision of a response; true when it is older than one seen before (stale). */
  observe(response: RevisionedResponse): boolean {
    const revision = Number(response.header.revision);
    if (revision < this.#highest) return true;
    this.#highest = revision;
    return false;
  }

  /** Records the revision of `response` once it arrives and passes it on. */
  async observed<T extends RevisionedResponse>(response: Promise<T>): Promise<T> {
    const answer = await response;
    this.observe(answer);
    return answer;
  }
}

/**
 * The ordering guard of a serializable read: its answer is used unless it is older than the
 * revision `floor` had seen when the read was sent (answers to calls running at the same
 * time may legitimately be newer); then `onStale` is told and the linearizable read answers.
 */
export async function orderedRead<T extends RevisionedResponse>(
  floor: RevisionFloor,
  serializable: () => Promise<T>,
  linearizable: () => Promise<T>,
  onStale?: (staleRevision: number, seenRevision: number) => void,
): Promise<T> {
  const seen = floor.highest;
  const answer = await serializable();
  floor.observe(answer);
  const revision = Number(answer.header.revision);
  if (revision >= seen) return answer;
  onStale?.(revision, seen);
  return floor.observed(linearizable());
}

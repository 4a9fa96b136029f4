/**
 * Shared TTL leases: values that expire after a TTL share one lease per time bucket instead
 * of a lease each. Used by the etcd KV backend and the `etcd` store type's markers.
 * @module
 */
import type { Deadline } from './deadline.ts';

/** Grants a lease of `ttlSeconds` (the granter may round up) within `deadline`; its id. */
export type LeaseGrant = (ttlSeconds: number, deadline: Deadline) => Promise<string>;

/**
 * One shared, not-kept-alive lease per TTL. A lease granted for a TTL is reused by every
 * value with that TTL during the bucket width, `max(1 s, ttl / 100)`, and is granted for
 * `ttl + width` seconds, so a value lives between `ttl` and `ttl + width` seconds.
 */
export class LeaseBuckets {
  readonly #grant: LeaseGrant;
  readonly #byTtl = new Map<number, { readonly grantedAt: number; readonly id: Promise<string> }>();

  constructor(grant: LeaseGrant) {
    this.#grant = grant;
  }

  /** The id of a lease under which a value lives at least `ttlSeconds`; may grant one within `deadline`. */
  leaseFor(ttlSeconds: number, deadline: Deadline): Promise<string> {
    const widthMs = Math.max(1000, ttlSeconds * 10);
    // Monotonic: a wall clock set back would keep a bucket, and its values, alive too long.
    const now = performance.now();
    const current = this.#byTtl.get(ttlSeconds);
    if (current !== undefined && now - current.grantedAt < widthMs) return current.id;
    const entry = { grantedAt: now, id: this.#grant(ttlSeconds + widthMs / 1000, deadline) };
    this.#byTtl.set(ttlSeconds, entry);
    // A failed grant must not be handed to later values of the same bucket.
    entry.id.catch(() => {
      if (this.#byTtl.get(ttlSeconds) === entry) this.#byTtl.delete(ttlSeconds);
    });
    return entry.id;
  }

  /** Forgets every bucket, e.g. after etcd reported one of their leases unknown. */
  clear(): void {
    this.#byTtl.clear();
  }
}

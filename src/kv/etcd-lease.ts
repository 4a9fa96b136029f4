/**
 * Leases granted by the etcd KV backend, and our keep-alive of them.
 * @module
 */
import type { Lease } from 'etcd3';
import { deadlineIn } from './deadline.ts';
import { ConstraintViolatedError, UnavailableError } from './errors.ts';
import type { KvLease } from './kv.ts';
import type { RpcRunner } from './etcd-rpc.ts';

/** What a lease needs from the KV that granted it. */
export interface LeaseOwner {
  readonly rpc: RpcRunner;
  readonly timeoutMs: number;
  /** Leases being kept alive, released on `close`. */
  readonly keptAlive: Set<EtcdLease>;
}

/**
 * A lease granted by the etcd KV. Keep-alive is ours, not etcd3's: etcd3 declares a
 * lease lost only after twice its TTL without contact, while the server may drop it after
 * one TTL, so we renew every third of the TTL and report the loss as soon as the TTL has
 * run out since the last renewal that etcd confirmed.
 */
export class EtcdLease implements KvLease {
  private renewTimer: NodeJS.Timeout | undefined;
  private expiryTimer: NodeJS.Timeout | undefined;
  private running = false;
  /** {@inheritDoc KvLease.heldUntil} */
  heldUntil: number;

  constructor(
    readonly id: string,
    readonly ttlSeconds: number,
    /** When the grant was sent (`performance.now()`): the lease lives at least `ttl` from then. */
    private validFrom: number,
    private readonly lease: Lease,
    private readonly owner: LeaseOwner,
  ) {
    this.heldUntil = validFrom + ttlSeconds * 1000;
  }

  /** {@inheritDoc KvLease.keepAlive} */
  keepAlive(onLost: (reason: Error) => void): void {
    if (this.running) throw new Error(`lease ${this.id} is already kept alive`);
    this.running = true;
    this.owner.keptAlive.add(this);
    let fired = false;
    const lose = (reason: Error): void => {
      if (fired || !this.running) return;
      fired = true;
      this.stop();
      onLost(reason);
    };
    this.lease.on('lost', lose);
    this.armExpiry(lose);
    void this.renew(lose);
  }

  /** {@inheritDoc KvLease.revoke} */
  async revoke(): Promise<void> {
    this.stop();
    await this.owner.rpc('lease', deadlineIn(this.owner.timeoutMs), (call) => this.lease.revoke(call));
  }

  /** {@inheritDoc KvLease.release} */
  release(): void {
    this.stop();
    this.lease.release();
  }

  /** One renewal, then schedules the next: a third of the TTL, sooner after a failure. */
  private async renew(lose: (reason: Error) => void): Promise<void> {
    const sentAt = performance.now();
    const period = (this.ttlSeconds * 1000) / 3;
    let delay = period;
    try {
      const response = await this.owner.rpc('lease', deadlineIn(Math.min(period, this.owner.timeoutMs)), (call) => this.lease.keepaliveOnce(call));
      if (!this.running) return;
      this.validFrom = sentAt;
      this.armExpiry(lose, Number(response.TTL));
    } catch (error) {
      // etcd answered that the lease is gone (etcd3 has emitted 'lost' as well).
      if (error instanceof ConstraintViolatedError) return lose(error);
      delay = Math.min(period, 250);
    }
    if (this.running) this.renewTimer = unrefTimer(() => void this.renew(lose), delay);
  }

  /** Reports the loss once `ttl` has passed since the last confirmed renewal. */
  private armExpiry(lose: (reason: Error) => void, ttlSeconds = this.ttlSeconds): void {
    clearTimeout(this.expiryTimer);
    this.heldUntil = this.validFrom + Math.min(ttlSeconds, this.ttlSeconds) * 1000;
    const reason = new UnavailableError(`lease ${this.id} could not be renewed within its TTL of ${this.ttlSeconds} s`);
    this.expiryTimer = unrefTimer(() => lose(reason), this.heldUntil - performance.now());
  }

  private stop(): void {
    this.running = false;
    this.heldUntil = -Infinity;
    clearTimeout(this.renewTimer);
    clearTimeout(this.expiryTimer);
    this.owner.keptAlive.delete(this);
  }
}

/** A timer that does not keep the process alive on its own. */
function unrefTimer(run: () => void, delayMs: number): NodeJS.Timeout {
  const timer = setTimeout(run, Math.max(0, delayMs));
  timer.unref();
  return timer;
}

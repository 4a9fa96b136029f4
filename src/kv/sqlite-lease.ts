/**
 * The embedded KV's lease: a row renewed every third of its TTL while kept alive, through
 * an owner (`sqlite.ts`) that renews and revokes it asynchronously.
 * @module
 */
import type { KvLease } from './kv.ts';

/** What a {@link SqliteLease} needs from the KV that granted it. */
export interface LeaseOwner {
  readonly keptAlive: Set<SqliteLease>;
  /** Extends the lease by its TTL; false if it had already expired or was revoked. */
  renew(lease: SqliteLease): Promise<boolean>;
  /** Deletes the lease and its keys. */
  revoke(lease: SqliteLease): Promise<void>;
}

export class SqliteLease implements KvLease {
  private timer: NodeJS.Timeout | undefined;
  private onLost: ((reason: Error) => void) | undefined;
  /** {@inheritDoc KvLease.heldUntil} */
  heldUntil: number;

  constructor(
    readonly id: string,
    readonly ttlSeconds: number,
    private readonly owner: LeaseOwner,
    /** When the grant was sent (`performance.now()`): the row cannot have been written earlier. */
    grantedAt: number,
  ) {
    this.heldUntil = grantedAt + ttlMs(ttlSeconds);
  }

  /** {@inheritDoc KvLease.keepAlive} */
  keepAlive(onLost: (reason: Error) => void): void {
    if (this.onLost !== undefined) throw new Error(`lease ${this.id} is already kept alive`);
    this.onLost = onLost;
    this.owner.keptAlive.add(this);
    void this.renew();
  }

  /** {@inheritDoc KvLease.revoke} */
  async revoke(): Promise<void> {
    this.release();
    await this.owner.revoke(this);
  }

  /** {@inheritDoc KvLease.release} */
  release(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.onLost = undefined;
    this.heldUntil = -Infinity;
    this.owner.keptAlive.delete(this);
  }

  private async renew(): Promise<void> {
    const sentAt = performance.now();
    let renewed: boolean;
    try {
      renewed = await this.owner.renew(this);
    } catch (error) {
      this.lose(error instanceof Error ? error : new Error(String(error)));
      return;
    }
    // Released or revoked while the renewal was in flight: nothing to report or schedule.
    if (this.onLost === undefined) return;
    if (!renewed) {
      this.lose(new Error(`lease ${this.id} expired or was revoked`));
      return;
    }
    this.heldUntil = sentAt + ttlMs(this.ttlSeconds);
    this.timer = setTimeout(() => void this.renew(), ttlMs(this.ttlSeconds) / 3);
    this.timer.unref();
  }

  private lose(reason: Error): void {
    const onLost = this.onLost;
    if (onLost === undefined) return;
    this.release();
    onLost(reason);
  }
}

export function ttlMs(ttlSeconds: number): number {
  return Math.ceil(ttlSeconds * 1000);
}

/**
 * This commitd instance in the KV: `instances/<id>` attached to a kept-alive lease. The id
 * is stable across restarts (config, or a file in the data dir), so a restarted instance
 * recognises — and adopts at once — the sessions of its own earlier run.
 * @module
 */
import { randomUUID } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { Kv, KvLease } from '../kv/kv.ts';
import { recordKeys, type InstanceRecord } from './records.ts';

/** The instance id from config, else from `<dataDir>/instance-id`, created on first start. */
export function stableInstanceId(dataDir: string, configured?: string): string {
  if (configured) return configured;
  const file = join(dataDir, 'instance-id');
  try {
    return readFileSync(file, 'utf8').trim();
  } catch {
    mkdirSync(dataDir, { recursive: true });
    const id = randomUUID();
    writeFileSync(file, `${id}\n`, { flag: 'wx' });
    return id;
  }
}

/** Registration of this instance; `onLost` fires whenever its lease is lost. */
export class Instance {
  readonly id: string;
  readonly #kv: Kv;
  readonly #ttlSeconds: number;
  readonly #logger: Logger;
  readonly #onLost: () => void;
  #lease: KvLease | undefined;
  #stopped = false;

  constructor(kv: Kv, id: string, ttlSeconds: number, logger: Logger, onLost: () => void) {
    this.#kv = kv;
    this.id = id;
    this.#ttlSeconds = ttlSeconds;
    this.#logger = logger;
    this.#onLost = onLost;
  }

  /** Registers under a fresh lease, replacing the record of an earlier run with this id. */
  async register(): Promise<void> {
    const lease = await this.#kv.grantLease(this.#ttlSeconds);
    const key = recordKeys.instance(this.id);
    const value = JSON.stringify({ pid: process.pid, startedAt: new Date().toISOString() } satisfies InstanceRecord);
    const existing = await this.#kv.get(key);
    if (existing) await this.#kv.update(key, value, existing.revision, { lease });
    else await this.#kv.create(key, value, { lease });
    this.#lease = lease;
    lease.keepAlive((reason) => this.#lost(lease, reason));
  }

  /**
   * True while this instance's lease is certainly alive in the KV (see
   * {@link KvLease.heldUntil}): no other instance can have found this one dead and adopted
   * its sessions. Checked by the clock, so it holds even when the event loop was blocked
   * past the TTL and the expiry timer has not run yet; such an overdue loss is reported here,
   * at once, as the timer would.
   */
  holdsLease(): boolean {
    const lease = this.#lease;
    if (!lease) return false;
    if (performance.now() < lease.heldUntil) return true;
    this.#lost(lease, new Error(`lease ${lease.id} ran past its TTL of ${lease.ttlSeconds} s without a confirmed renewal`));
    return false;
  }

  /** True if the instance `id` holds a live registration (a linearizable read). */
  async isAlive(id: string): Promise<boolean> {
    return (await this.#kv.get(recordKeys.instance(id))) !== undefined;
  }

  /** Revokes the lease: other instances may adopt what is left at once. */
  async stop(): Promise<void> {
    this.#stopped = true;
    await this.#lease?.revoke().catch((err: unknown) => this.#logger.warn({ err }, 'could not revoke the instance lease'));
  }

  #lost(lease: KvLease, reason: Error): void {
    if (this.#stopped || lease !== this.#lease) return;
    lease.release();
    this.#logger.error({ err: reason, instance: this.id }, 'instance lease lost: no longer driving owned sessions; re-registering');
    this.#lease = undefined;
    this.#onLost();
    void this.#reregister();
  }

  async #reregister(): Promise<void> {
    for (let attempt = 1; !this.#stopped && !this.#lease; attempt++) {
      try {
        await this.register();
        this.#logger.info({ instance: this.id }, 'instance registered again');
      } catch (err) {
        this.#logger.warn({ err, attempt }, 're-registering the instance failed; retrying');
        await new Promise((resolve) => setTimeout(resolve, Math.min(5000, 250 * attempt)).unref());
      }
    }
  }
}

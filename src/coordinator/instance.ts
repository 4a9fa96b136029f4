/**
 * This commitd instance in the KV: `instances/<id>` attached to a kept-alive lease. The id
 * is stable across restarts (config, or a file in the data dir), so a restarted instance
 * recognises — and adopts at once — the sessions of its own earlier run.
 * @module
 */
import { randomUUID } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import { CommitdError } from '../errors/core.ts';
import type { Kv, KvLease } from '../kv/kv.ts';
import { AlreadyExistsError, VersionMismatchError } from '../kv/errors.ts';
import { recordKeys, type InstanceRecord } from './records.ts';

/** Another live process is registered under this instance id. */
export class DuplicateInstanceError extends CommitdError {
  constructor(id: string, record: Partial<InstanceRecord>, why: string) {
    const where = `pid ${record.pid ?? '?'} on host ${record.host ?? '?'}, started ${record.startedAt ?? '?'}`;
    super(
      'INSTANCE_ID_IN_USE',
      `instance id ${JSON.stringify(id)} is in use by another live process (${where}; ${why}): give each instance its own instanceId or data dir`,
    );
  }
}

/** This process, as its instance record names it. */
const SELF = {
  nonce: randomUUID(),
  host: hostname(),
  bootId: readOr('/proc/sys/kernel/random/boot_id'),
  processStart: processStartOf(process.pid),
};

function readOr(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return undefined;
  }
}

/** When process `pid` started (clock ticks since boot, /proc/<pid>/stat field 22), where the system says. */
function processStartOf(pid: number): string | undefined {
  const stat = readOr(`/proc/${pid}/stat`);
  // The command name (field 2) may hold spaces and parentheses: count fields after the last ')'.
  return stat?.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
}

/** True when a process with this pid exists (it may belong to another user). */
function processExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Who holds a live registration of this id: this process (`self`), a process known dead
 * (`dead`: an earlier run that crashed before its lease expired), a live other process
 * (`alive`), or one on another machine whose liveness only its lease can tell (`unknown`).
 * See docs/recovery.md, "Instance ids".
 */
export function holderOf(record: Partial<InstanceRecord>): 'self' | 'dead' | 'alive' | 'unknown' {
  if (record.nonce === SELF.nonce) return 'self';
  if (record.host !== SELF.host) return 'unknown';
  if (record.bootId !== undefined && SELF.bootId !== undefined && record.bootId !== SELF.bootId) return 'dead';
  // An earlier registration within this very process (a restart in a test, an embedding): the newer one takes over.
  if (record.pid === undefined || record.pid === process.pid) return 'dead';
  if (!processExists(record.pid)) return 'dead';
  // The pid may have been reused by an unrelated process since the crash.
  if (record.processStart !== undefined && processStartOf(record.pid) !== undefined && processStartOf(record.pid) !== record.processStart) return 'dead';
  return 'alive';
}

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

  /**
   * Registers under a fresh lease. A live record of this id left by an earlier run (a dead
   * process) is taken over at once; one held by a live process is refused with
   * `DuplicateInstanceError`; one from another machine is waited on until its lease expires
   * (a dead holder) or refused when it is still renewed after the TTL (a live one).
   */
  async register(): Promise<void> {
    const lease = await this.#kv.grantLease(this.#ttlSeconds);
    try {
      await this.#claim(lease);
    } catch (err) {
      await lease.revoke().catch(() => undefined);
      throw err;
    }
    this.#lease = lease;
    lease.keepAlive((reason) => this.#lost(lease, reason));
  }

  async #claim(lease: KvLease): Promise<void> {
    const key = recordKeys.instance(this.id);
    const record: InstanceRecord = { pid: process.pid, startedAt: new Date().toISOString(), ...SELF };
    const value = JSON.stringify(record);
    for (let attempt = 1; ; attempt++) {
      const existing = await this.#kv.get(key);
      try {
        if (!existing) {
          await this.#kv.create(key, value, { lease });
          return;
        }
        const held = parseInstance(existing.value);
        const holder = holderOf(held);
        if (holder === 'alive') throw new DuplicateInstanceError(this.id, held, 'it is running on this machine');
        if (holder === 'unknown') {
          await this.#awaitExpiry(key, existing.revision, held);
          continue;
        }
        if (holder === 'dead')
          this.#logger.info({ instance: this.id, previous: held }, 'taking over this instance id from an earlier run that did not stop cleanly');
        await this.#kv.update(key, value, existing.revision, { lease });
        return;
      } catch (err) {
        // Another process registered between the read and the write: decide again.
        if ((err instanceof AlreadyExistsError || err instanceof VersionMismatchError) && attempt < 5) continue;
        throw err;
      }
    }
  }

  /** Waits until a record from another machine is gone (its lease expired); refuses it if it outlives a TTL. */
  async #awaitExpiry(key: string, revision: number, held: Partial<InstanceRecord>): Promise<void> {
    const deadline = performance.now() + this.#ttlSeconds * 1500 + 2000;
    this.#logger.warn({ instance: this.id, previous: held }, 'this instance id is registered from another machine: waiting for that lease to expire');
    while (performance.now() < deadline) {
      const now = await this.#kv.get(key);
      if (!now || now.revision !== revision) return;
      await sleep(250);
    }
    throw new DuplicateInstanceError(this.id, held, 'its lease is still being renewed');
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
    // Lost, then found held by another process: nothing is driven here until it goes away.
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

function parseInstance(value: string): Partial<InstanceRecord> {
  try {
    const parsed: unknown = JSON.parse(value);
    return typeof parsed === 'object' && parsed !== null ? (parsed as Partial<InstanceRecord>) : {};
  } catch {
    return {};
  }
}

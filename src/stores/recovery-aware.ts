/**
 * A session whose driver applies differently while recovery re-applies a log (the SQL
 * drivers: a marker found means skip; a prepared transaction may be waiting).
 * @module
 */
import { HelperCommittable, type StoreDriver } from './helper.ts';

/** A driver told whether the session begins afresh or recovers. */
export interface RecoveryAwareDriver<Change> extends StoreDriver<Change> {
  recovering: boolean;
}

/** Sets the driver's `recovering` flag around `begin` and `beginRecovery`. */
export class RecoveryAwareSession<Change> extends HelperCommittable<Change> {
  readonly #driver: RecoveryAwareDriver<Change>;

  constructor(name: string, driver: RecoveryAwareDriver<Change>) {
    super(name, driver);
    this.#driver = driver;
  }

  override async begin(key: Uint8Array): Promise<void> {
    this.#driver.recovering = false;
    await super.begin(key);
  }

  override async beginRecovery(key: Uint8Array): Promise<void> {
    this.#driver.recovering = true;
    try {
      await super.beginRecovery(key);
    } finally {
      this.#driver.recovering = false;
    }
  }
}

/**
 * A failed session on a running in-process service, made the way production makes one:
 * the KV holds what a commitd that died right after its commit point leaves (a
 * `committing` record with its change log, owned by an instance that is gone), another
 * writer has meanwhile taken the row the session inserts, and the service's own recovery
 * rolls it forward, which the store rejects. (`test/failed-sessions.test.ts` gets there
 * with a real crash; suites about what operators do next need it in milliseconds.)
 */
import { join } from 'node:path';
import { sessionIdOfChanges } from '../../src/core/session-id.ts';
import { sqliteRun } from './rows.ts';
import type { TestService } from './service.ts';

/** Makes `key` a failed session on store `store` (a sqlite store in the service's dir); resolves once it is `failed`. */
export async function makeFailedSession(service: TestService, key: string, store = 'main'): Promise<void> {
  const path = join(service.dir, `${store}.db`);
  const table = `taken_${key.replace(/[^A-Za-z0-9_]/g, '_')}`;
  sqliteRun(path, `CREATE TABLE IF NOT EXISTS ${table} (id INTEGER PRIMARY KEY)`);
  const changes = { [store]: [{ sql: `INSERT INTO ${table}(id) VALUES (1)` }] };
  // The other writer got there between the crash and the recovery.
  sqliteRun(path, `INSERT INTO ${table}(id) VALUES (1)`);
  const record = {
    state: 'committing',
    stores: [store],
    owner: 'instance-that-died',
    startedAt: new Date().toISOString(),
    sessionId: sessionIdOfChanges(changes),
    oneShot: true,
    log: changes,
  };
  await service.kv.create(`sessions/${key}`, JSON.stringify(record));
  await service.coordinator.recoverOnce();
  const view = await service.coordinator.get(key);
  if (view?.state !== 'failed') throw new Error(`session ${key} did not fail: ${JSON.stringify(view)}`);
}

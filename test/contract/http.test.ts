/**
 * The store contract against the built-in `http` store type. The datastore is a real
 * participant service built on the SDK's barrier (test/support/stock-participant.ts), on a
 * free loopback port; a sample lands once when its attempt is confirmed there.
 */
import { pino } from 'pino';
import { makeTempDir, removeTempDir } from '../harness/child.ts';
import { httpStoreType, type HttpChange } from '../../src/stores/http/store.ts';
import { startStockParticipant } from '../support/stock-participant.ts';
import { storeContract } from './store-contract.ts';

storeContract<HttpChange>({
  name: 'http',
  marker: 'coordinator',
  unavailable: () => undefined,
  async start() {
    const dir = makeTempDir('http-contract');
    const participant = await startStockParticipant(dir);
    return {
      open: async () =>
        httpStoreType.create(
          { baseUrl: participant.url, timeoutMs: 2000, retry: { attempts: 2, backoffMs: 20, confirmForMs: 2000 } },
          { name: 'contract', logger: pino({ level: 'silent' }), dataDir: dir, retentionSeconds: 60 },
        ),
      changes: (tag) => [
        { action: 'reserve', body: { sku: 'widget', qty: 1 } },
        { action: 'note', body: { text: tag } },
      ],
      applied: async (tag) => participant.confirmed(tag),
      // An unknown SKU: the participant refuses the try, at prepare.
      rejected: () => ({ action: 'reserve', body: { sku: 'no-such-sku', qty: 1 } }),
      async stop() {
        await participant.close();
        removeTempDir(dir);
      },
    };
  },
});

/** The store contract against the built-in `nats` store type, on a throwaway JetStream server. */
import { pino } from 'pino';
import { natsStoreType, type NatsChange } from '../../src/stores/nats/store.ts';
import { natsBinary, startNats } from '../harness/nats.ts';
import { natsReader } from '../support/nats.ts';
import { storeContract } from './store-contract.ts';

const STREAM = 'contract';

storeContract<NatsChange>({
  name: 'nats',
  unavailable: () => (natsBinary() ? undefined : 'nats-server not found (set NATS_SERVER_BIN or put nats-server on PATH)'),
  async start() {
    const server = await startNats();
    const reader = await natsReader(server.url);
    await reader.addStream(STREAM, ['contract.>']);
    return {
      open: async () =>
        natsStoreType.create(
          { servers: server.url, stream: STREAM },
          { name: 'contract', logger: pino({ level: 'silent' }), dataDir: '.', retentionSeconds: 60 },
        ),
      changes: (tag) => [
        { subject: `contract.${tag}.a`, data: 'a' },
        { subject: `contract.${tag}.b`, data: { n: 1, tag }, headers: { 'X-Tag': tag } },
      ],
      // Messages on the first change's subject: how many times the sample landed.
      applied: (tag) => reader.count(STREAM, `contract.${tag}.a`),
      // Nothing is rejected with ChangeRejectedError: a change NATS cannot take is refused
      // with 400 at apply (test/nats-store.test.ts).
      async stop() {
        await reader.close();
        await server.cleanup();
      },
    };
  },
});

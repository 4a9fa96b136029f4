/** The store contract against the built-in `etcd` store type, under a prefix of its own. */
import { Etcd3 } from 'etcd3';
import { pino } from 'pino';
import { etcdStoreType, type EtcdChange } from '../../src/stores/etcd/store.ts';
import { etcdBinary, startEtcd } from '../harness/etcd.ts';
import { storeContract } from './store-contract.ts';

const PREFIX = '/contract/';

storeContract<EtcdChange>({
  name: 'etcd',
  unavailable: () => (etcdBinary() ? undefined : 'etcd binary not found (set ETCD_BIN or put etcd on PATH)'),
  async start() {
    const server = await startEtcd();
    const reader = new Etcd3({ hosts: server.endpoints });
    return {
      open: async () =>
        etcdStoreType.create(
          { prefix: PREFIX, endpoints: server.endpoints },
          { name: 'contract', logger: pino({ level: 'silent' }), dataDir: '.', retentionSeconds: 60 },
        ),
      changes: (tag) => [
        { op: 'put', key: `${tag}/a`, value: 'a' },
        { op: 'put', key: `${tag}/b`, value: 'b' },
      ],
      // A key's version counts the puts since it was created: how many times the sample landed.
      applied: async (tag) => Number((await reader.get(`${PREFIX}${tag}/a`).exec()).kvs[0]?.version ?? 0),
      // No change is rejected before commit: marker keys are refused with BookkeepingError
      // (test/boundary-redis-etcd.test.ts), which is not a ChangeRejectedError.
      async stop() {
        reader.close();
        await server.cleanup();
      },
    };
  },
});

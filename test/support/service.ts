/**
 * A real commitd for tests: real KV (embedded SQLite, or a throwaway etcd from the
 * harness), real sqlite stores in a temp dir, the real coordinator and HTTP app.
 * Suites call `app.inject()`; nothing listens on a socket.
 */
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { pino, type Logger } from 'pino';
import type { StoreDefinition } from '../../src/coordinator/types.ts';
import { createService, type Service, type ServiceOptions } from '../../src/service.ts';
import { makeTempDir, removeTempDir } from '../harness/child.ts';
import { etcdBinary, startEtcd, type EtcdServer } from '../harness/etcd.ts';

/** The KV backends every service-level suite runs against. */
export const KV_BACKENDS = ['sqlite', 'etcd'] as const;
export type KvBackend = (typeof KV_BACKENDS)[number];

let sharedEtcd: Promise<EtcdServer> | undefined;

/** One etcd per test process, isolated per service by namespace. */
export function sharedEtcdServer(): Promise<EtcdServer> {
  sharedEtcd ??= startEtcd();
  return sharedEtcd;
}

/** What a suite over `kv` needs on this machine, for `skipUnlessFound`. */
export function kvNeeds(kv: KvBackend): Record<string, unknown> {
  return kv === 'etcd' ? { etcd: etcdBinary() } : {};
}

export interface TestServiceOptions extends Partial<Omit<ServiceOptions, 'etcd'>> {
  readonly kv: KvBackend;
  /** Stores; default two sqlite stores `main` and `audit` in the temp dir. */
  readonly stores?: readonly StoreDefinition[];
  /** Reuse this data dir / namespace (a restarted service over the same state). */
  readonly dir?: string;
  readonly namespace?: string;
  /** The service's logger; default silent (or COMMITD_TEST_LOG's level). */
  readonly logger?: Logger;
}

export interface TestService extends Service {
  readonly dir: string;
  readonly namespace: string;
  readonly options: TestServiceOptions;
  /** Closes the service and removes its temp dir. */
  dispose(): Promise<void>;
}

/** Default stores of a test service: two sqlite files in `dir`. */
export function sqliteStores(dir: string, names: readonly string[] = ['main', 'audit']): StoreDefinition[] {
  return names.map((name) => ({ name, type: 'sqlite', options: { path: join(dir, `${name}.db`) } }));
}

export async function startTestService(options: TestServiceOptions): Promise<TestService> {
  const dir = options.dir ?? makeTempDir('svc');
  const namespace = options.namespace ?? `/t-${randomUUID()}/`;
  const etcd = options.kv === 'etcd' ? { endpoints: (await sharedEtcdServer()).endpoints, namespace } : undefined;
  const logger = options.logger ?? pino({ level: process.env.COMMITD_TEST_LOG ?? 'silent' });
  const service = await createService(
    {
      dataDir: dir,
      host: '127.0.0.1',
      stores: sqliteStores(dir),
      plugins: [],
      retentionSeconds: 3600,
      idleTimeoutMs: 60_000,
      maxOpenSessions: 10_000,
      // commitd's default. A shorter lease makes every suite depend on the event loop never
      // stalling for 2/3 of it, which a loaded machine does not guarantee (module loading at
      // start-up stalled it for over 4 s); suites about the lease set their own.
      leaseTtlSeconds: 10,
      ...options,
      etcd,
    },
    logger,
  );
  return {
    ...service,
    dir,
    namespace,
    options: { ...options, dir, namespace },
    async dispose() {
      await service.close();
      if (!options.dir) await removeTempDir(dir);
    },
  };
}

/**
 * Wires one commitd: KV → stores → coordinator → HTTP app, and takes it apart again.
 * `main.ts` adds the config, the socket and the signals; tests use this directly.
 * @module
 */
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import type { Kv } from './kv/kv.ts';
import { EtcdKv } from './kv/etcd.ts';
import { SqliteKv } from './kv/sqlite.ts';
import { builtinStoreTypes } from './stores/index.ts';
import { loadPlugin } from './stores/plugins.ts';
import { StoreRegistry } from './stores/registry.ts';
import { StoreCatalog } from './stores/catalog.ts';
import type { StoreContext } from './stores/api.ts';
import { Coordinator } from './coordinator/coordinator.ts';
import { Failpoints } from './coordinator/failpoints.ts';
import { stableInstanceId } from './coordinator/instance.ts';
import type { StoreDefinition } from './stores/registry.ts';
import { buildApp } from './http/app.ts';
import type { AccessToken } from './http/tokens.ts';
import { createMetrics, type Metrics } from './metrics.ts';

/** Everything a service needs, fully resolved (see `config.ts` for where it comes from). */
export interface ServiceOptions {
  readonly etcd?: { readonly endpoints: readonly string[]; readonly namespace: string };
  readonly dataDir: string;
  readonly host: string;
  readonly bodyLimit?: number;
  readonly token?: string;
  /** Tokens of `auth.tokens` (see `src/http/tokens.ts`). */
  readonly tokens?: readonly AccessToken[];
  readonly stores: readonly StoreDefinition[];
  /** Folders a runtime-registered sqlite store may live in besides the data dir (absolute). */
  readonly storeRoots?: readonly string[];
  /** Plugin module paths, already resolved against the config file's directory. */
  readonly plugins: readonly string[];
  readonly pluginBaseDir?: string;
  readonly retentionSeconds: number;
  readonly idleTimeoutMs: number;
  readonly maxOpenSessions: number;
  /** Cap on the bytes all open sessions' change logs hold; default the coordinator's. */
  readonly openLogBytes?: number;
  readonly leaseTtlSeconds: number;
  readonly recoveryIntervalMs?: number;
  readonly instanceId?: string;
  readonly failpoints?: string;
  /** Bound of each coordinator KV operation, in ms. */
  readonly kvTimeoutMs?: number;
  /** How long a request waits for another instance's `committing` record to settle (default 2000 ms). */
  readonly settleWaitMs?: number;
}

/** A wired, started commitd (not yet listening). */
export interface Service {
  readonly app: FastifyInstance;
  readonly coordinator: Coordinator;
  readonly registry: StoreRegistry;
  readonly catalog: StoreCatalog;
  readonly kv: Kv;
  readonly metrics: Metrics;
  /** Stops accepting, cancels open sessions, gives up the lease, closes stores and KV. */
  close(): Promise<void>;
}

/** The embedded KV's file in the data dir. */
const EMBEDDED_KV_FILE = 'coordinator.db';

function openKv(options: ServiceOptions, metrics: Metrics): Kv {
  const onOperation = (op: string, durationMs: number, ok: boolean) => metrics.kvSeconds.observe({ op, ok: String(ok) }, durationMs / 1000);
  if (options.etcd) {
    return new EtcdKv({ endpoints: options.etcd.endpoints, namespace: options.etcd.namespace, timeoutMs: options.kvTimeoutMs, onOperation });
  }
  // On the event loop, not a thread of its own: measured (docs/performance.md, "The
  // embedded KV's thread"), a message to a thread cost more than the fsync it would move.
  return new SqliteKv({ path: join(options.dataDir, EMBEDDED_KV_FILE), onOperation });
}

/** Builds and starts a service; on failure releases what it opened and rethrows. */
export async function createService(options: ServiceOptions, logger: Logger): Promise<Service> {
  const metrics = createMetrics();
  const failpoints = new Failpoints(options.failpoints);
  const kv = openKv(options, metrics);
  const registry = new StoreRegistry();
  let closeCatalog: () => void = () => undefined;
  const storeContext = (name: string): StoreContext => ({
    name,
    logger: logger.child({ store: name }),
    dataDir: options.dataDir,
    retentionSeconds: options.retentionSeconds,
    etcdEndpoints: options.etcd?.endpoints,
  });
  try {
    for (const type of builtinStoreTypes()) registry.registerType(type);
    for (const plugin of options.plugins) registry.registerType(await loadPlugin(plugin, options.pluginBaseDir ?? process.cwd()));
    const catalog = new StoreCatalog({
      kv,
      registry,
      context: storeContext,
      logger: logger.child({ component: 'catalog' }),
      configStores: options.stores,
      confinement: {
        dataDir: options.dataDir,
        storeRoots: options.storeRoots ?? [],
        reserved: [join(options.dataDir, EMBEDDED_KV_FILE), join(options.dataDir, 'instance-id')],
      },
      retentionSeconds: options.retentionSeconds,
    });
    closeCatalog = () => catalog.close();
    const coordinator = new Coordinator({
      kv,
      // The answer leaves once every store committed; a retry anywhere waits for the result.
      earlyReply: true,
      // One instance on the embedded KV: no other process queues for the sqlite stores' locks.
      prepareTogether: !options.etcd,
      ...(options.settleWaitMs !== undefined ? { settleWaitMs: options.settleWaitMs } : {}),
      stores: {
        get: (name) => catalog.get(name),
        list: () => catalog.list(),
        validateChange: (store, change) => catalog.validateChange(store, change),
        add: (definition, by) => catalog.register(definition, by),
        remove: (name, by) => catalog.remove(name, by),
        isCatalogued: (name) => catalog.isCatalogued(name),
        health: (timeoutMs) => catalog.health(timeoutMs),
        removals: () => catalog.removals(),
      },
      // Recovery runs once the catalog's stores were opened (or found down).
      storesReady: () => catalog.start(),
      instanceId: stableInstanceId(options.dataDir, options.instanceId),
      logger,
      metrics,
      failpoints,
      retentionSeconds: options.retentionSeconds,
      idleTimeoutMs: options.idleTimeoutMs,
      maxOpenSessions: options.maxOpenSessions,
      openLogBytes: options.openLogBytes,
      leaseTtlSeconds: options.leaseTtlSeconds,
      recoveryIntervalMs: options.recoveryIntervalMs,
    });
    await coordinator.start();
    const app = await buildApp({
      coordinator,
      metrics,
      logger,
      token: options.token,
      tokens: options.tokens,
      bodyLimit: options.bodyLimit,
      host: options.host,
    });
    const close = async () => {
      await app.close();
      await coordinator.shutdown();
      catalog.close();
      await registry.closeAll();
      await kv.close();
    };
    return { app, coordinator, registry, catalog, kv, metrics, close };
  } catch (err) {
    closeCatalog();
    await registry.closeAll().catch(() => undefined);
    await kv.close().catch(() => undefined);
    throw err;
  }
}

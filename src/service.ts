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
import type { StoreContext } from './stores/api.ts';
import { Coordinator } from './coordinator/coordinator.ts';
import { Failpoints } from './coordinator/failpoints.ts';
import { stableInstanceId } from './coordinator/instance.ts';
import type { StoreDefinition } from './stores/registry.ts';
import { buildApp } from './http/app.ts';
import { createMetrics, type Metrics } from './metrics.ts';

/** Everything a service needs, fully resolved (see `config.ts` for where it comes from). */
export interface ServiceOptions {
  readonly etcd?: { readonly endpoints: readonly string[]; readonly namespace: string };
  readonly dataDir: string;
  readonly host: string;
  readonly bodyLimit?: number;
  readonly token?: string;
  readonly stores: readonly StoreDefinition[];
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
}

/** A wired, started commitd (not yet listening). */
export interface Service {
  readonly app: FastifyInstance;
  readonly coordinator: Coordinator;
  readonly registry: StoreRegistry;
  readonly kv: Kv;
  readonly metrics: Metrics;
  /** Stops accepting, cancels open sessions, gives up the lease, closes stores and KV. */
  close(): Promise<void>;
}

function openKv(options: ServiceOptions, metrics: Metrics): Kv {
  const onOperation = (op: string, durationMs: number, ok: boolean) => metrics.kvSeconds.observe({ op, ok: String(ok) }, durationMs / 1000);
  if (options.etcd) {
    return new EtcdKv({ endpoints: options.etcd.endpoints, namespace: options.etcd.namespace, timeoutMs: options.kvTimeoutMs, onOperation });
  }
  return new SqliteKv({ path: join(options.dataDir, 'coordinator.db'), onOperation });
}

/** Builds and starts a service; on failure releases what it opened and rethrows. */
export async function createService(options: ServiceOptions, logger: Logger): Promise<Service> {
  const metrics = createMetrics();
  const failpoints = new Failpoints(options.failpoints);
  const kv = openKv(options, metrics);
  const registry = new StoreRegistry();
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
    for (const definition of options.stores) await registry.add(definition, storeContext(definition.name));
    const coordinator = new Coordinator({
      kv,
      // One instance owns the embedded KV: nobody else can see a result that has not landed.
      earlyReply: kv instanceof SqliteKv,
      stores: {
        get: (name) => registry.get(name),
        list: () => registry.list(),
        validateChange: (store, change) => registry.validateChange(store, change),
        add: (definition) => registry.add(definition, storeContext(definition.name)),
        remove: (name) => registry.remove(name),
      },
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
    const app = await buildApp({ coordinator, metrics, logger, token: options.token, bodyLimit: options.bodyLimit, host: options.host });
    const close = async () => {
      await app.close();
      await coordinator.shutdown();
      await registry.closeAll();
      await kv.close();
    };
    return { app, coordinator, registry, kv, metrics, close };
  } catch (err) {
    await registry.closeAll().catch(() => undefined);
    await kv.close().catch(() => undefined);
    throw err;
  }
}

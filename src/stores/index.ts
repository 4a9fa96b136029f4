/**
 * Store types and the machinery around them: the committable helper, the built-in types,
 * the plugin loader and the registry. Knows nothing of HTTP.
 * @module
 */
import { etcdStoreType } from './etcd/store.ts';
import { httpStoreType } from './http/store.ts';
import { natsStoreType } from './nats/store.ts';
import { mysqlStoreType } from './mysql/store.ts';
import { postgresStoreType } from './postgres/store.ts';
import { redisStoreType } from './redis/store.ts';
import { sqliteStoreType } from './sqlite/store.ts';
import type { StoreType } from './api.ts';

export type { JsonSchema, OrphanDecision, Store, StoreContext, StoreSession, StoreSessionContext, StoreType } from './api.ts';
export {
  ChangeRejectedError,
  HelperCommittable,
  MarkerConflictError,
  MarkerExistsError,
  StoreUnavailableError,
  type StoreDriver,
} from './helper.ts';
export { sqliteStoreType, type SqliteChange, type SqliteOptions } from './sqlite/store.ts';
export { loadPlugin, PluginLoadError } from './plugins.ts';
export { etcdStoreType } from './etcd/store.ts';
export { natsStoreType } from './nats/store.ts';
export { mysqlStoreType } from './mysql/store.ts';
export { postgresStoreType } from './postgres/store.ts';
export { redisStoreType } from './redis/store.ts';
export { httpStoreType, type HttpChange, type HttpOptions } from './http/store.ts';
export {
  createValidatorCompiler,
  describeSchemaError,
  DuplicateStoreTypeError,
  InvalidChangeError,
  InvalidStoreError,
  StoreOpenError,
  StoreRegistry,
  type RegistryContext,
  type StoreDefinition,
} from './registry.ts';

/** The store types commitd ships with; register each in a `StoreRegistry`. */
export function builtinStoreTypes(): StoreType[] {
  return [sqliteStoreType, postgresStoreType, redisStoreType, etcdStoreType, natsStoreType, mysqlStoreType, httpStoreType];
}

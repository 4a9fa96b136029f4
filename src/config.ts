/**
 * commitd's configuration: environment variables, then the optional JSON file named by
 * `COMMITD_CONFIG`, resolved into one typed `Config`.
 *
 * Precedence: an environment variable, when set (and not empty), overrides the file's
 * value for the same setting; the file overrides the defaults. So one file can be shared
 * by every instance while each overrides its port or endpoints in its environment.
 * Relative paths: `COMMITD_CONFIG`, `COMMITD_DATA_DIR` and the file's `dataDir` resolve
 * against the working directory (the same value means the same place in both); plugin
 * paths starting with `.` resolve against the config file's directory, since plugins ship
 * beside the config that names them.
 * @module
 */
import { readFileSync } from 'node:fs';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { Type, type Static } from '@sinclair/typebox';
import ms from 'ms';
import { COORDINATOR_DEFAULTS } from './coordinator/coordinator.ts';
import { CommitdError } from './errors/core.ts';
import { createValidatorCompiler, describeSchemaError, type StoreDefinition } from './stores/registry.ts';
import { DURATION } from './stores/limits.ts';
import { STORE_NAME_PATTERN } from './contract/schemas.ts';
import { SINGLE_TOKEN_NAME, TokenConfigError, parseTokenEntries, type AccessToken } from './http/tokens.ts';

/** The configuration is invalid; the message is one line naming the setting and the problem. */
export class ConfigError extends CommitdError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('INVALID_CONFIG', message, options);
  }
}

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

/** A pino log level. */
export type LogLevel = (typeof LOG_LEVELS)[number];

/** The fully resolved configuration: every default applied, every path absolute. */
export interface Config {
  readonly host: string;
  readonly port: number;
  /** Largest request body, in bytes. */
  readonly bodyLimit: number;
  /** The coordinator KV on etcd; undefined → the embedded KV under `dataDir` (single instance only). */
  readonly etcd?: { readonly endpoints: readonly string[]; readonly namespace: string };
  readonly dataDir: string;
  /** Bearer token with every scope (`COMMITD_TOKEN`); undefined and no `tokens` → no auth (loopback only). */
  readonly token?: string;
  /** The file's `auth.tokens`, resolved: name, SHA-256, scopes, stores (docs/security.md). */
  readonly tokens: readonly AccessToken[];
  readonly logLevel: LogLevel;
  /** `point=action;…`, parsed by the coordinator's failpoints; undefined → inert. */
  readonly failpoints?: string;
  readonly stores: readonly StoreDefinition[];
  /** Folders (absolute) a runtime-registered sqlite store may live in besides the data dir. */
  readonly storeRoots: readonly string[];
  /** Plugin modules: paths absolute, bare package names as given. */
  readonly plugins: readonly string[];
  /** The config file's directory (the working directory without a file): base of plugin paths. */
  readonly pluginBaseDir: string;
  readonly retentionSeconds: number;
  readonly idleTimeoutMs: number;
  readonly maxOpenSessions: number;
  /** Largest total of the change logs all open sessions hold, in bytes of JSON (DESIGN "The boundary" 3). */
  readonly openLogBytes: number;
  readonly leaseTtlSeconds: number;
  /** How often recovery looks for sessions of dead instances, in ms. */
  readonly recoveryIntervalMs: number;
  readonly instanceId?: string;
  /** The config file read, absolute; undefined when `COMMITD_CONFIG` is unset. */
  readonly configFile?: string;
}

const DEFAULTS = {
  host: '127.0.0.1',
  port: 8080,
  bodyLimit: 1024 * 1024,
  namespace: '/commitd/',
  dataDir: './data',
  logLevel: 'info',
} as const;

/** Durations in the file, by field, and their defaults (the coordinator's), in milliseconds. */
const DURATION_DEFAULTS_MS = {
  retention: COORDINATOR_DEFAULTS.retentionSeconds * 1000,
  sessionIdleTimeout: COORDINATOR_DEFAULTS.idleTimeoutMs,
  leaseTtl: COORDINATOR_DEFAULTS.leaseTtlSeconds * 1000,
  recoveryInterval: COORDINATOR_DEFAULTS.recoveryIntervalMs,
} as const;

/** A duration: a number of seconds, or a string such as "24h", "60s", "500ms". */
const Duration = Type.Unsafe<number | string>({ type: ['number', 'string'] });
const NonEmpty = Type.String({ minLength: 1 });

const ConfigFileSchema = Type.Object(
  {
    etcd: Type.Optional(Type.Object({ endpoints: Type.Optional(Type.Array(NonEmpty)), namespace: Type.Optional(NonEmpty) }, { additionalProperties: false })),
    dataDir: Type.Optional(NonEmpty),
    http: Type.Optional(
      Type.Object(
        {
          host: Type.Optional(NonEmpty),
          port: Type.Optional(Type.Integer({ minimum: 1, maximum: 65535 })),
          bodyLimit: Type.Optional(Type.Integer({ minimum: 1 })),
        },
        { additionalProperties: false },
      ),
    ),
    stores: Type.Optional(
      Type.Array(
        Type.Object(
          { name: Type.String({ pattern: STORE_NAME_PATTERN }), type: NonEmpty, options: Type.Optional(Type.Unknown()) },
          { additionalProperties: false },
        ),
      ),
    ),
    plugins: Type.Optional(Type.Array(NonEmpty)),
    storeRoots: Type.Optional(Type.Array(NonEmpty)),
    retention: Type.Optional(Duration),
    sessionIdleTimeout: Type.Optional(Duration),
    leaseTtl: Type.Optional(Duration),
    recoveryInterval: Type.Optional(Duration),
    maxOpenSessions: Type.Optional(Type.Integer({ minimum: 1 })),
    // File only, like maxOpenSessions: a memory budget belongs with the deployment's file.
    openLogBytes: Type.Optional(Type.Integer({ minimum: 1 })),
    instanceId: Type.Optional(NonEmpty),
    token: Type.Optional(NonEmpty),
    auth: Type.Optional(
      Type.Object(
        {
          tokens: Type.Array(
            Type.Object(
              {
                name: NonEmpty,
                // Either one: checked by parseTokenEntries, with a message saying which.
                sha256: Type.Optional(Type.String()),
                tokenEnv: Type.Optional(NonEmpty),
                // Plain strings here so an unknown scope is named as such, not as an enum mismatch.
                scopes: Type.Array(Type.String()),
                stores: Type.Optional(Type.Array(Type.String())),
              },
              { additionalProperties: false },
            ),
          ),
        },
        { additionalProperties: false },
      ),
    ),
  },
  { additionalProperties: false },
);

type ConfigFile = Static<typeof ConfigFileSchema>;

const validateFile = createValidatorCompiler().compile<ConfigFile>(ConfigFileSchema);

/**
 * Milliseconds of a duration: a number of seconds, or a number with a unit ("500ms",
 * "60s", "2m", "24h", "1d"), computed by the `ms` package; `field` names it in the error.
 */
export function parseDuration(value: number | string, field: string): number {
  // The grammar stays the documented one (`ms` alone would also take "5", as milliseconds, or "1 week").
  const millis = typeof value === 'number' ? value * 1000 : DURATION.test(value.trim()) ? ms(value.trim() as ms.StringValue) : Number.NaN;
  if (typeof millis !== 'number' || !Number.isFinite(millis) || millis <= 0) {
    throw new ConfigError(`${field}: must be a positive duration such as "24h", "60s", "500ms" or a number of seconds, got ${JSON.stringify(value)}`);
  }
  return millis;
}

/** An environment variable, or undefined when unset or empty (`VAR= cmd` means "not set"). */
function envValue(env: NodeJS.ProcessEnv, name: string): string | undefined {
  const value = env[name]?.trim();
  return value ? value : undefined;
}

function parsePort(text: string, field: string): number {
  const port = /^\d+$/.test(text) ? Number(text) : NaN;
  if (!(port >= 1 && port <= 65535)) throw new ConfigError(`${field}: must be an integer 1–65535, got ${JSON.stringify(text)}`);
  return port;
}

/** `http(s)://host:port` or `host:port`, as the etcd client takes them. */
function parseEndpoints(text: string, field: string): string[] {
  const endpoints = text
    .split(',')
    .map((endpoint) => endpoint.trim())
    .filter(Boolean);
  for (const endpoint of endpoints) {
    const valid = /^https?:\/\/[^\s/]+(:\d+)?\/?$/.test(endpoint) || /^([^\s:/]+|\[[0-9a-fA-F:.]+\]):\d+$/.test(endpoint);
    if (!valid) throw new ConfigError(`${field}: ${JSON.stringify(endpoint)} is not an endpoint (expected http(s)://host:port or host:port)`);
  }
  return endpoints;
}

function parseLogLevel(text: string, field: string): LogLevel {
  const level = LOG_LEVELS.find((candidate) => candidate === text.toLowerCase());
  if (!level) throw new ConfigError(`${field}: must be one of ${LOG_LEVELS.join(', ')}, got ${JSON.stringify(text)}`);
  return level;
}

/** Reads and validates the config file; every error names the file and the field. */
function readConfigFile(name: string, path: string): ConfigFile {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    const reason = (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (err as Error).message;
    throw new ConfigError(`COMMITD_CONFIG: cannot read ${name}: ${reason}`, { cause: err });
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new ConfigError(`config file ${name}: invalid JSON: ${(err as Error).message}`, { cause: err });
  }
  if (!validateFile(parsed)) {
    const [first] = validateFile.errors ?? [];
    throw new ConfigError(`config file ${name}: ${first ? describeSchemaError(first) : 'is invalid'}`);
  }
  const names = new Set<string>();
  parsed.stores?.forEach((store, i) => {
    if (names.has(store.name)) throw new ConfigError(`config file ${name}: stores[${i}].name: duplicate store name ${JSON.stringify(store.name)}`);
    names.add(store.name);
  });
  return parsed;
}

/**
 * Loads the configuration from `env` (default `process.env`) and the file it names.
 * @throws ConfigError — one line naming the setting, e.g. `COMMITD_PORT: must be an integer 1–65535, got "abc"`.
 */
export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const configName = envValue(env, 'COMMITD_CONFIG');
  const configFile = configName === undefined ? undefined : resolve(configName);
  const file: ConfigFile = configName === undefined ? {} : readConfigFile(configName, resolve(configName));
  const inFile = (field: string) => `config file ${configName}: ${field}`;
  const pluginBaseDir = configFile ? dirname(configFile) : process.cwd();

  const fromEnv = <T>(name: string, parse: (text: string, field: string) => T): T | undefined => {
    const text = envValue(env, name);
    return text === undefined ? undefined : parse(text, name);
  };

  const endpoints = fromEnv('COMMITD_ETCD_ENDPOINTS', parseEndpoints) ?? file.etcd?.endpoints ?? [];
  const namespace = envValue(env, 'COMMITD_ETCD_NAMESPACE') ?? file.etcd?.namespace ?? DEFAULTS.namespace;
  const dataDir = resolve(envValue(env, 'COMMITD_DATA_DIR') ?? file.dataDir ?? DEFAULTS.dataDir);
  const stores = (file.stores ?? [{ name: 'main', type: 'sqlite', options: { path: join(dataDir, 'main.db') } }]).map(({ name, type, options }) => ({
    name,
    type,
    options: options ?? {},
  }));
  const plugins = (file.plugins ?? []).map((plugin) => (plugin.startsWith('.') || isAbsolute(plugin) ? resolve(pluginBaseDir, plugin) : plugin));
  const duration = (field: 'retention' | 'sessionIdleTimeout' | 'leaseTtl' | 'recoveryInterval') =>
    file[field] === undefined ? DURATION_DEFAULTS_MS[field] : parseDuration(file[field], inFile(field));

  const token = envValue(env, 'COMMITD_TOKEN') ?? file.token;
  let tokens: AccessToken[];
  try {
    tokens = parseTokenEntries(file.auth?.tokens ?? [], env, inFile('auth.tokens'), token === undefined ? [] : [SINGLE_TOKEN_NAME]);
  } catch (err) {
    if (err instanceof TokenConfigError) throw new ConfigError(err.message, { cause: err });
    throw err;
  }

  return {
    host: envValue(env, 'COMMITD_HOST') ?? file.http?.host ?? DEFAULTS.host,
    port: fromEnv('COMMITD_PORT', parsePort) ?? file.http?.port ?? DEFAULTS.port,
    bodyLimit: file.http?.bodyLimit ?? DEFAULTS.bodyLimit,
    etcd: endpoints.length > 0 ? { endpoints, namespace } : undefined,
    dataDir,
    token,
    tokens,
    logLevel: fromEnv('COMMITD_LOG_LEVEL', parseLogLevel) ?? DEFAULTS.logLevel,
    failpoints: envValue(env, 'COMMITD_FAILPOINTS'),
    stores,
    // Like dataDir, relative to the working directory.
    storeRoots: (file.storeRoots ?? []).map((root) => resolve(root)),
    plugins,
    pluginBaseDir,
    retentionSeconds: duration('retention') / 1000,
    idleTimeoutMs: duration('sessionIdleTimeout'),
    maxOpenSessions: file.maxOpenSessions ?? COORDINATOR_DEFAULTS.maxOpenSessions,
    openLogBytes: file.openLogBytes ?? COORDINATOR_DEFAULTS.openLogBytes,
    leaseTtlSeconds: duration('leaseTtl') / 1000,
    recoveryIntervalMs: duration('recoveryInterval'),
    instanceId: file.instanceId,
    configFile,
  };
}

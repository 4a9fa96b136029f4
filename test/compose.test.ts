/**
 * The full stack (docs/full-stack.md): `docker-compose.yml`, `examples/full-stack.json` and
 * the `Dockerfile` must agree with each other and with commitd's own validation. Docker does
 * not run in this project's CI, so this test only parses the files: every store points at a
 * compose service, the config is mounted where `COMMITD_CONFIG` says, the config and each
 * store's options validate, the image runs `src/main.ts` on the port compose publishes, and
 * postgres allows the prepared transactions the `twoPhase` option needs.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join, posix, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, it } from 'node:test';
import { parse as parseYaml } from 'yaml';
import { builtinStoreTypes, createValidatorCompiler, describeSchemaError } from '../src/stores/index.ts';
import { loadConfig } from '../src/config.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const COMPOSE_FILE = join(ROOT, 'docker-compose.yml');
const CONFIG_FILE = join(ROOT, 'examples', 'full-stack.json');
const DOCKERFILE = join(ROOT, 'Dockerfile');
const DOCKERIGNORE = join(ROOT, '.dockerignore');
const COMMITD_SERVICE = 'commitd';

// ---------------------------------------------------------------------------------------
// docker-compose.yml, as far as this test reads it (short and long syntax both accepted)
// ---------------------------------------------------------------------------------------

type Scalar = string | number | boolean | null;

interface ComposeService {
  readonly image?: string;
  readonly build?: unknown;
  readonly command?: string | readonly string[];
  readonly environment?: Readonly<Record<string, Scalar>> | readonly string[];
  readonly volumes?: readonly (string | { type?: string; source?: string; target: string; read_only?: boolean })[];
  readonly ports?: readonly (string | number | { target: number | string; published?: number | string; host_ip?: string })[];
  readonly depends_on?: readonly string[] | Readonly<Record<string, { condition?: string }>>;
  readonly healthcheck?: { readonly test?: string | readonly string[]; readonly disable?: boolean };
}

interface Compose {
  readonly services: Readonly<Record<string, ComposeService>>;
}

interface Mount {
  readonly kind: 'bind' | 'volume';
  readonly source: string;
  readonly target: string;
  readonly readOnly: boolean;
}

interface PublishedPort {
  readonly hostIp?: string;
  readonly published?: number;
  readonly target: number;
}

function readCompose(): Compose {
  const parsed: unknown = parseYaml(readFileSync(COMPOSE_FILE, 'utf8'));
  const services = (parsed as { services?: unknown } | null)?.services;
  assert.ok(services && typeof services === 'object', `${COMPOSE_FILE}: has no "services" map`);
  return parsed as Compose;
}

function service(name: string): ComposeService {
  const found = compose.services[name];
  assert.ok(found, `docker-compose.yml: no service named ${JSON.stringify(name)} (services: ${Object.keys(compose.services).join(', ')})`);
  return found;
}

function environmentOf(svc: ComposeService): Record<string, string> {
  const env: Record<string, string> = {};
  if (Array.isArray(svc.environment)) {
    for (const entry of svc.environment as readonly string[]) {
      const eq = entry.indexOf('=');
      if (eq > 0) env[entry.slice(0, eq)] = entry.slice(eq + 1);
    }
  } else if (svc.environment) {
    for (const [name, value] of Object.entries(svc.environment)) if (value !== null) env[name] = String(value);
  }
  return env;
}

function mountsOf(svc: ComposeService): Mount[] {
  return (svc.volumes ?? []).map((volume) => {
    if (typeof volume === 'string') {
      const [source = '', target = '', mode = ''] = volume.split(':');
      const kind = /^[./~]/.test(source) ? 'bind' : 'volume';
      return { kind, source, target, readOnly: mode.split(',').includes('ro') };
    }
    return { kind: volume.type === 'bind' ? 'bind' : 'volume', source: volume.source ?? '', target: volume.target, readOnly: volume.read_only === true };
  });
}

function portsOf(svc: ComposeService): PublishedPort[] {
  return (svc.ports ?? []).map((port) => {
    if (typeof port === 'object') {
      return { hostIp: port.host_ip, published: port.published === undefined ? undefined : Number(port.published), target: Number(port.target) };
    }
    const parts = String(port).split('/')[0]!.split(':');
    const target = Number(parts.at(-1));
    if (parts.length === 1) return { target };
    if (parts.length === 2) return { published: Number(parts[0]), target };
    return { hostIp: parts.slice(0, -2).join(':'), published: Number(parts.at(-2)), target };
  });
}

function dependenciesOf(svc: ComposeService): Map<string, string | undefined> {
  const deps = svc.depends_on;
  if (!deps) return new Map();
  if (Array.isArray(deps)) return new Map((deps as readonly string[]).map((name) => [name, undefined]));
  return new Map(Object.entries(deps as Readonly<Record<string, { condition?: string }>>).map(([name, dep]) => [name, dep.condition]));
}

/** The command as words (compose splits a string command shell-style; plain words suffice here). */
function commandOf(svc: ComposeService): string[] {
  if (svc.command === undefined) return [];
  return typeof svc.command === 'string' ? svc.command.trim().split(/\s+/) : [...svc.command];
}

/** `-c name=value` and `--name=value` settings of a postgres command line. */
function postgresSettings(words: readonly string[]): Map<string, string> {
  const settings = new Map<string, string>();
  words.forEach((word, i) => {
    const setting = word === '-c' ? words[i + 1] : word.startsWith('--') ? word.slice(2) : word.startsWith('-c') && word.length > 2 ? word.slice(2) : undefined;
    const eq = setting?.indexOf('=') ?? -1;
    if (setting && eq > 0) settings.set(setting.slice(0, eq).replace(/-/g, '_'), setting.slice(eq + 1));
  });
  return settings;
}

/** Values of a `--flag=value` or `--flag value` option, comma lists split. */
function flagValues(words: readonly string[], flag: string): string[] {
  const values: string[] = [];
  words.forEach((word, i) => {
    if (word.startsWith(`${flag}=`)) values.push(word.slice(flag.length + 1));
    else if (word === flag && words[i + 1] !== undefined) values.push(words[i + 1]!);
  });
  return values
    .flatMap((value) => value.split(','))
    .map((value) => value.trim())
    .filter(Boolean);
}

// ---------------------------------------------------------------------------------------
// Dockerfile, as far as this test reads it
// ---------------------------------------------------------------------------------------

interface Instruction {
  readonly keyword: string;
  readonly args: string;
  /** Index of the build stage (its FROM), from 0. */
  readonly stage: number;
}

function readDockerfile(): Instruction[] {
  const instructions: Instruction[] = [];
  let stage = -1;
  let pending = '';
  for (const raw of readFileSync(DOCKERFILE, 'utf8').split(/\r?\n/)) {
    const line = raw.trim();
    if (line.startsWith('#') || (line === '' && pending === '')) continue; // comments (also inside continuations)
    if (line.endsWith('\\')) {
      pending += `${line.slice(0, -1).trim()} `;
      continue;
    }
    const full = (pending + line).trim();
    pending = '';
    if (!full) continue;
    const keyword = full.split(/\s+/)[0] ?? '';
    const upper = keyword.toUpperCase();
    if (upper === 'FROM') stage += 1;
    instructions.push({ keyword: upper, args: full.slice(keyword.length).trim(), stage });
  }
  return instructions;
}

/** Instructions of the final stage: what the image runs. */
function finalStage(): Instruction[] {
  const last = Math.max(...dockerfile.map((instruction) => instruction.stage));
  return dockerfile.filter((instruction) => instruction.stage === last);
}

function lastOf(keyword: string): Instruction | undefined {
  return finalStage()
    .filter((instruction) => instruction.keyword === keyword)
    .at(-1);
}

/** An exec-form (`["a","b"]`) or shell-form command as words. */
function commandWords(args: string): string[] {
  if (args.startsWith('[')) return JSON.parse(args) as string[];
  return ['/bin/sh', '-c', args];
}

function dockerEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const { args } of finalStage().filter((instruction) => instruction.keyword === 'ENV')) {
    if (!/^\S+=/.test(args)) {
      const [name = '', ...value] = args.split(/\s+/);
      env[name] = value.join(' ');
      continue;
    }
    for (const match of args.matchAll(/([A-Za-z_][A-Za-z0-9_]*)=("(?:[^"\\]|\\.)*"|\S*)/g)) {
      const value = match[2]!;
      env[match[1]!] = value.startsWith('"') ? (JSON.parse(value) as string) : value;
    }
  }
  return env;
}

// ---------------------------------------------------------------------------------------
// examples/full-stack.json
// ---------------------------------------------------------------------------------------

interface StoreEntry {
  readonly name: string;
  readonly type: string;
  readonly options?: Record<string, unknown>;
}

interface FullStackConfig {
  readonly etcd?: { readonly endpoints?: readonly string[]; readonly namespace?: string };
  readonly dataDir?: string;
  readonly stores?: readonly StoreEntry[];
}

function readConfigFile(): FullStackConfig {
  try {
    return JSON.parse(readFileSync(CONFIG_FILE, 'utf8')) as FullStackConfig;
  } catch (err) {
    throw new Error(`${CONFIG_FILE}: cannot be read as JSON: ${(err as Error).message}`);
  }
}

/** `http://host:port`, `redis://…`, `postgres://…` or a bare `host:port`, as host and port. */
function hostAndPort(endpoint: string, defaultPort: number): { host: string; port: number } {
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(endpoint)) {
    const url = new URL(endpoint);
    return { host: url.hostname, port: url.port ? Number(url.port) : defaultPort };
  }
  const match = /^([^\s:/]+):(\d+)$/.exec(endpoint);
  assert.ok(match, `${JSON.stringify(endpoint)} is neither a URL nor host:port`);
  return { host: match[1]!, port: Number(match[2]) };
}

/** Where a store connects, per store type; sqlite (a local file) connects nowhere. */
function storeEndpoints(store: StoreEntry): { host: string; port: number }[] {
  const options = store.options ?? {};
  switch (store.type) {
    case 'postgres':
      assert.equal(typeof options.connectionString, 'string', `store ${store.name}: options.connectionString must be a string`);
      return [hostAndPort(options.connectionString as string, 5432)];
    case 'mysql':
      assert.equal(typeof options.connectionString, 'string', `store ${store.name}: options.connectionString must be a string`);
      return [hostAndPort(options.connectionString as string, 3306)];
    case 'redis':
      assert.equal(typeof options.url, 'string', `store ${store.name}: options.url must be a string`);
      return [hostAndPort(options.url as string, 6379)];
    case 'etcd': {
      const endpoints = (options.endpoints as string[] | undefined) ?? coordinatorEtcdEndpoints();
      return endpoints.map((endpoint) => hostAndPort(endpoint, 2379));
    }
    case 'nats': {
      const servers = options.servers as string | string[];
      const list = typeof servers === 'string' ? servers.split(',').map((server) => server.trim()) : servers;
      return list.map((server) => hostAndPort(server, 4222));
    }
    case 'sqlite':
      return [];
    default:
      assert.fail(`store ${store.name}: type ${JSON.stringify(store.type)} has no rule in test/compose.test.ts for finding its host`);
  }
}

/** The etcd endpoints commitd's coordinator KV uses in the container: the environment wins over the file. */
function coordinatorEtcdEndpoints(): string[] {
  const fromEnv = environmentOf(service(COMMITD_SERVICE)).COMMITD_ETCD_ENDPOINTS;
  return fromEnv ? fromEnv.split(',').map((endpoint) => endpoint.trim()) : [...(config.etcd?.endpoints ?? [])];
}

/** Ports a compose service's container listens on, from its command or its image's default. */
function listeningPorts(name: string): number[] {
  const svc = service(name);
  const words = commandOf(svc);
  const image = svc.image ?? '';
  if (/(^|\/)etcd(:|@|$)/.test(image)) {
    const urls = flagValues(words, '--listen-client-urls');
    return urls.length > 0 ? urls.map((url) => hostAndPort(url, 2379).port) : [2379];
  }
  if (/(^|\/)postgres(:|@|$)/.test(image)) return [Number(postgresSettings(words).get('port') ?? 5432)];
  if (/(^|\/)redis(:|@|$)/.test(image)) return [Number(flagValues(words, '--port')[0] ?? 6379)];
  if (/(^|\/)nats(:|@|$)/.test(image)) return [Number(flagValues(words, '-p')[0] ?? 4222)];
  if (/(^|\/)mariadb(:|@|$)/.test(image)) return [Number(flagValues(words, '--port')[0] ?? 3306)];
  if (name === COMMITD_SERVICE) return [Number(containerEnv().COMMITD_PORT ?? 8080)];
  return [];
}

/** The environment commitd sees in its container: the image's ENV, then compose's environment. */
function containerEnv(): Record<string, string> {
  return { ...dockerEnv(), ...environmentOf(service(COMMITD_SERVICE)) };
}

function configMount(): Mount {
  const target = environmentOf(service(COMMITD_SERVICE)).COMMITD_CONFIG;
  assert.ok(target, 'docker-compose.yml: service commitd sets no COMMITD_CONFIG');
  const mount = mountsOf(service(COMMITD_SERVICE)).find((candidate) => candidate.target === target);
  assert.ok(
    mount,
    `docker-compose.yml: COMMITD_CONFIG is ${target}, but commitd mounts nothing there (mounts: ${mountsOf(service(COMMITD_SERVICE))
      .map((m) => m.target)
      .join(', ')})`,
  );
  return mount;
}

function dataDirMount(): Mount {
  const dataDir = containerEnv().COMMITD_DATA_DIR ?? config.dataDir;
  assert.ok(dataDir, 'neither the image, compose nor the config sets the data dir');
  const mount = mountsOf(service(COMMITD_SERVICE)).find((candidate) => candidate.target === dataDir);
  assert.ok(mount, `docker-compose.yml: commitd's data dir ${dataDir} is not a volume: its databases would die with the container`);
  return mount;
}

const compose = readCompose();
const config = readConfigFile();
const dockerfile = readDockerfile();
const stores = config.stores ?? [];

// ---------------------------------------------------------------------------------------

describe('full stack: docker-compose.yml, examples/full-stack.json and the Dockerfile agree', () => {
  it('starts etcd, postgres, redis and commitd, commitd built from the Dockerfile', () => {
    for (const name of ['etcd', 'postgres', 'redis', COMMITD_SERVICE]) service(name);
    assert.ok(service(COMMITD_SERVICE).build !== undefined, 'docker-compose.yml: commitd must be built from the Dockerfile (a "build" key)');
  });

  // `http` drives a participant service, which is the user's own code, not a datastore the
  // full stack could run (examples/order-flow/ shows one beside commitd).
  it('configures one store of every built-in datastore type', () => {
    const types = stores.map((store) => store.type).sort();
    const builtin = builtinStoreTypes()
      .map((type) => type.type)
      .filter((type) => type !== 'http')
      .sort();
    assert.deepEqual(types, builtin, `examples/full-stack.json: store types ${types.join(', ')} should be exactly ${builtin.join(', ')}`);
  });

  for (const store of stores.filter((candidate) => candidate.type !== 'sqlite')) {
    it(`store ${store.name} (${store.type}) connects to a compose service, on the port it listens on`, () => {
      for (const { host, port } of storeEndpoints(store)) {
        assert.ok(
          compose.services[host],
          `store ${store.name}: host ${JSON.stringify(host)} is not a service in docker-compose.yml (services: ${Object.keys(compose.services).join(', ')})`,
        );
        const ports = listeningPorts(host);
        assert.ok(
          ports.includes(port),
          `store ${store.name}: connects to ${host}:${port}, but service ${host} listens on ${ports.join(', ') || 'no known port'}`,
        );
      }
    });
  }

  it('points the coordinator KV at the compose etcd, as that etcd advertises itself', () => {
    const etcd = service('etcd');
    const advertised = flagValues(commandOf(etcd), '--advertise-client-urls');
    const endpoints = [...coordinatorEtcdEndpoints(), ...(config.etcd?.endpoints ?? [])];
    assert.ok(endpoints.length > 0, 'commitd has no etcd endpoints: the coordinator KV would be the embedded, single-instance one');
    for (const endpoint of endpoints) {
      const { host, port } = hostAndPort(endpoint, 2379);
      assert.equal(host, 'etcd', `coordinator etcd endpoint ${endpoint} is not the compose service "etcd"`);
      assert.ok(listeningPorts('etcd').includes(port), `coordinator etcd endpoint ${endpoint}: etcd listens on ${listeningPorts('etcd').join(', ')}`);
      assert.ok(
        advertised.some((url) => hostAndPort(url, 2379).host === host && hostAndPort(url, 2379).port === port),
        `etcd advertises ${advertised.join(', ') || 'no client URL (--advertise-client-urls)'}, not ${endpoint}`,
      );
    }
  });

  it("mounts the config read-only where commitd's COMMITD_CONFIG points", () => {
    const mount = configMount();
    assert.equal(mount.kind, 'bind', `docker-compose.yml: ${mount.target} should be a bind mount of examples/full-stack.json`);
    assert.equal(resolve(ROOT, mount.source), CONFIG_FILE, `docker-compose.yml: ${mount.target} mounts ${mount.source}, not examples/full-stack.json`);
    assert.ok(mount.readOnly, `docker-compose.yml: the config mount ${mount.target} should be read-only (":ro")`);
  });

  it("validates with commitd's own config loader", () => {
    let loaded: ReturnType<typeof loadConfig>;
    try {
      loaded = loadConfig({ COMMITD_CONFIG: CONFIG_FILE });
    } catch (err) {
      assert.fail(`examples/full-stack.json is rejected by loadConfig: ${(err as Error).message}`);
    }
    assert.deepEqual(
      loaded.stores.map((store) => store.name),
      stores.map((store) => store.name),
      'loadConfig should keep the stores of the file, in order',
    );
  });

  it('resolves, in the container environment, to a token-protected commitd on 0.0.0.0 with etcd and the data volume', () => {
    const env = { ...containerEnv(), COMMITD_CONFIG: CONFIG_FILE, COMMITD_TOKEN: 'test-token' };
    const loaded = loadConfig(env);
    assert.equal(loaded.host, '0.0.0.0', 'commitd must listen on 0.0.0.0 in the container (COMMITD_HOST), or nothing outside it reaches it');
    assert.equal(loaded.token, 'test-token', 'COMMITD_TOKEN from compose should reach the config');
    assert.deepEqual(loaded.etcd?.endpoints, coordinatorEtcdEndpoints(), 'the coordinator KV should be etcd');
    assert.equal(loaded.dataDir, dataDirMount().target, "commitd's data dir should be the mounted volume");
  });

  for (const store of stores) {
    it(`store ${store.name} (${store.type}): options match the store type's optionsSchema`, () => {
      const storeType = builtinStoreTypes().find((candidate) => candidate.type === store.type);
      assert.ok(storeType, `store ${store.name}: ${JSON.stringify(store.type)} is not a built-in store type`);
      const validate = createValidatorCompiler().compile(storeType.optionsSchema);
      const valid = validate(store.options ?? {});
      const [first] = validate.errors ?? [];
      assert.ok(valid, `store ${store.name} (${store.type}): ${first ? describeSchemaError(first, 'options') : 'options are invalid'}`);
    });
  }

  it('keeps every sqlite database on the data volume', () => {
    const dataDir = dataDirMount().target;
    for (const store of stores.filter((candidate) => candidate.type === 'sqlite')) {
      const path = String(store.options?.path ?? '');
      const absolute = posix.isAbsolute(path) ? path : posix.join('/app', path); // the image's WORKDIR
      assert.ok(
        absolute.startsWith(`${dataDir}/`),
        `store ${store.name}: ${path} is not under the data volume ${dataDir}; the database would not survive the container`,
      );
    }
  });

  it('builds on a Node line that package.json engines accept', () => {
    const image = /^ARG NODE_IMAGE=node:(\d+)-slim$/m.exec(readFileSync(DOCKERFILE, 'utf8'));
    assert.ok(image, 'Dockerfile: ARG NODE_IMAGE=node:<major>-slim names the Node of both stages');
    const engines = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { engines: { node: string } }).engines.node;
    assert.match(engines, new RegExp(`(^|\\|\\|\\s*)\\^${image[1]}\\.`), `package.json engines ${engines} do not accept Node ${image[1]}, the image's`);
    assert.ok(
      finalStage().some((instruction) => instruction.keyword === 'FROM' && instruction.args.startsWith('$' + '{NODE_IMAGE}')),
      'Dockerfile: the final stage must run on the NODE_IMAGE argument',
    );
  });

  it('runs src/main.ts in the image', () => {
    const cmd = lastOf('CMD');
    assert.ok(cmd, 'Dockerfile: the final stage has no CMD');
    const words = commandWords(cmd.args);
    assert.ok(words.includes('src/main.ts'), `Dockerfile: CMD ${cmd.args} does not run src/main.ts`);
    assert.ok(words.includes('tsx'), `Dockerfile: CMD ${cmd.args} does not run through tsx (there is no build step)`);
    // A wrapper (npx, tsx's CLI, sh -c) as PID 1's child would swallow docker stop's SIGTERM.
    assert.equal(words[0], 'node', `Dockerfile: CMD ${cmd.args} must start node itself, so SIGTERM reaches commitd`);
    assert.ok(
      finalStage().some((instruction) => instruction.keyword === 'COPY' && /(^|\s)\.?\/?src\/?\s/.test(`${instruction.args} `)),
      'Dockerfile: the final stage does not COPY src/',
    );
  });

  it('exposes the port commitd listens on, and compose publishes that port on 127.0.0.1 only', () => {
    const exposed = finalStage()
      .filter((instruction) => instruction.keyword === 'EXPOSE')
      .flatMap((instruction) => instruction.args.split(/\s+/))
      .map((port) => Number(port.split('/')[0]));
    const listening = Number(containerEnv().COMMITD_PORT ?? 8080);
    assert.ok(exposed.includes(listening), `Dockerfile: EXPOSE ${exposed.join(' ') || '(none)'}, but commitd listens on ${listening} (COMMITD_PORT)`);
    const published = portsOf(service(COMMITD_SERVICE));
    assert.ok(published.length > 0, 'docker-compose.yml: commitd publishes no port');
    for (const port of published) {
      assert.ok(
        exposed.includes(port.target),
        `docker-compose.yml: commitd publishes container port ${port.target}, the Dockerfile exposes ${exposed.join(', ')}`,
      );
      assert.equal(
        port.hostIp,
        '127.0.0.1',
        `docker-compose.yml: commitd's port ${port.target} should be published on 127.0.0.1 only, got ${port.hostIp ?? 'every interface'}`,
      );
    }
  });

  it('enables prepared transactions in postgres, since a store uses twoPhase', () => {
    const twoPhase = stores.filter((store) => store.type === 'postgres' && store.options?.twoPhase === true);
    assert.ok(twoPhase.length > 0, 'examples/full-stack.json: no postgres store sets twoPhase: true');
    for (const store of twoPhase) {
      const [{ host }] = storeEndpoints(store) as [{ host: string; port: number }];
      const max = Number(postgresSettings(commandOf(service(host))).get('max_prepared_transactions') ?? 0);
      assert.ok(
        max > 0,
        `store ${store.name} sets twoPhase, but service ${host} runs with max_prepared_transactions = ${max}: add "-c max_prepared_transactions=16" to its command`,
      );
    }
  });

  it("uses the postgres service's user, password and database", () => {
    for (const store of stores.filter((candidate) => candidate.type === 'postgres')) {
      const url = new URL(String(store.options?.connectionString));
      const env = environmentOf(service(url.hostname));
      const user = env.POSTGRES_USER ?? 'postgres';
      assert.equal(decodeURIComponent(url.username), user, `store ${store.name}: connects as ${url.username}, postgres creates ${user} (POSTGRES_USER)`);
      if (env.POSTGRES_HOST_AUTH_METHOD !== 'trust') {
        assert.equal(decodeURIComponent(url.password), env.POSTGRES_PASSWORD, `store ${store.name}: the password differs from POSTGRES_PASSWORD`);
      }
      const database = url.pathname.replace(/^\//, '') || user;
      assert.equal(database, env.POSTGRES_DB ?? user, `store ${store.name}: database ${database} is not the one postgres creates (POSTGRES_DB)`);
    }
  });

  it('starts commitd only once every service a store or the KV uses is healthy', () => {
    const needed = new Set([...stores.flatMap(storeEndpoints), ...coordinatorEtcdEndpoints().map((e) => hostAndPort(e, 2379))].map(({ host }) => host));
    const deps = dependenciesOf(service(COMMITD_SERVICE));
    for (const name of needed) {
      assert.equal(deps.get(name), 'service_healthy', `docker-compose.yml: commitd should depend on ${name} with condition: service_healthy`);
      const check = service(name).healthcheck;
      assert.ok(check?.test && !check.disable, `docker-compose.yml: service ${name} has no healthcheck, so service_healthy never holds`);
    }
  });

  it('requires COMMITD_TOKEN and bakes none into the image', () => {
    const token = environmentOf(service(COMMITD_SERVICE)).COMMITD_TOKEN;
    assert.match(
      token ?? '',
      /^\$\{COMMITD_TOKEN:\?[^}]+\}$/,
      // biome-ignore lint/suspicious/noTemplateCurlyInString: the message quotes compose's own ${…} syntax
      'docker-compose.yml: COMMITD_TOKEN should be ${COMMITD_TOKEN:?…}, so compose refuses to start without one',
    );
    assert.equal(dockerEnv().COMMITD_TOKEN, undefined, 'Dockerfile: must not set COMMITD_TOKEN');
    assert.equal(dockerEnv().COMMITD_HOST, '0.0.0.0', 'Dockerfile: should set COMMITD_HOST=0.0.0.0');
  });

  it('runs as a non-root user, with a HEALTHCHECK on /healthz', () => {
    const user = lastOf('USER')?.args;
    assert.ok(user && !/^(root|0)(:|$)/.test(user), `Dockerfile: the final stage runs as ${user ?? 'root (no USER)'}`);
    const healthcheck = lastOf('HEALTHCHECK');
    assert.ok(healthcheck, 'Dockerfile: no HEALTHCHECK');
    const cmd = healthcheck.args.replace(/^(--\S+\s+)*CMD\s+/, '');
    const words = commandWords(cmd);
    assert.equal(words[0], 'node', `Dockerfile: HEALTHCHECK should run node (slim has no curl), runs ${words[0]}`);
    assert.match(words.join(' '), /\/healthz/, 'Dockerfile: HEALTHCHECK does not request /healthz');
  });

  it('keeps local state and dependencies out of the build context (.dockerignore)', () => {
    const ignored = readFileSync(DOCKERIGNORE, 'utf8')
      .split(/\r?\n/)
      .map((line) => line.trim().replace(/^\//, '').replace(/\/$/, ''))
      .filter((line) => line && !line.startsWith('#'));
    for (const entry of ['node_modules', 'data', '.git', 'bench/results.json']) {
      assert.ok(ignored.includes(entry), `.dockerignore should list ${entry}`);
    }
  });
});

import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { ConfigError, loadConfig, parseDuration } from '../src/config.ts';

describe('loadConfig', () => {
  let dir: string;

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'commitd-config-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  /** Writes a config file and returns the environment that names it. */
  function withFile(contents: unknown, env: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
    const path = join(dir, 'conf', 'commitd.json');
    mkdirSync(join(dir, 'conf'), { recursive: true });
    writeFileSync(path, typeof contents === 'string' ? contents : JSON.stringify(contents));
    return { COMMITD_CONFIG: path, ...env };
  }

  function rejects(env: NodeJS.ProcessEnv, message: string | RegExp): void {
    assert.throws(
      () => loadConfig(env),
      (err: unknown) => {
        assert.ok(err instanceof ConfigError, String(err));
        assert.equal(err.code, 'INVALID_CONFIG');
        assert.doesNotMatch(err.message, /\n/);
        if (typeof message === 'string') assert.equal(err.message, message);
        else assert.match(err.message, message);
        return true;
      },
    );
  }

  it('has the documented defaults with nothing set', () => {
    const config = loadConfig({});
    const dataDir = resolve('./data');
    assert.deepEqual(config, {
      host: '127.0.0.1',
      port: 8080,
      bodyLimit: 1048576,
      etcd: undefined,
      dataDir,
      token: undefined,
      tokens: [],
      logLevel: 'info',
      failpoints: undefined,
      stores: [{ name: 'main', type: 'sqlite', options: { path: join(dataDir, 'main.db') } }],
      storeRoots: [],
      plugins: [],
      pluginBaseDir: process.cwd(),
      retentionSeconds: 86400,
      idleTimeoutMs: 60000,
      maxOpenSessions: 10000,
      openLogBytes: 268435456,
      leaseTtlSeconds: 10,
      recoveryIntervalMs: 5000,
      instanceId: undefined,
      configFile: undefined,
    });
  });

  it('reads every environment variable', () => {
    const config = loadConfig({
      COMMITD_HOST: '0.0.0.0',
      COMMITD_PORT: '9090',
      COMMITD_ETCD_ENDPOINTS: 'http://10.0.0.1:2379, 10.0.0.2:2379,',
      COMMITD_ETCD_NAMESPACE: '/staging/',
      COMMITD_DATA_DIR: join(dir, 'd'),
      COMMITD_TOKEN: 's3cret',
      COMMITD_LOG_LEVEL: 'DEBUG',
      COMMITD_FAILPOINTS: 'commit.afterIntent=crash',
    });
    assert.equal(config.host, '0.0.0.0');
    assert.equal(config.port, 9090);
    assert.deepEqual(config.etcd, { endpoints: ['http://10.0.0.1:2379', '10.0.0.2:2379'], namespace: '/staging/' });
    assert.equal(config.dataDir, join(dir, 'd'));
    assert.deepEqual(config.stores, [{ name: 'main', type: 'sqlite', options: { path: join(dir, 'd', 'main.db') } }]);
    assert.equal(config.token, 's3cret');
    assert.equal(config.logLevel, 'debug');
    assert.equal(config.failpoints, 'commit.afterIntent=crash');
  });

  it('treats empty variables as unset', () => {
    const config = loadConfig({ COMMITD_PORT: '', COMMITD_ETCD_ENDPOINTS: ' ', COMMITD_TOKEN: '', COMMITD_CONFIG: '' });
    assert.equal(config.port, 8080);
    assert.equal(config.etcd, undefined);
    assert.equal(config.token, undefined);
  });

  it('reads the file named by COMMITD_CONFIG', () => {
    const config = loadConfig(
      withFile({
        etcd: { endpoints: ['https://etcd:2379'], namespace: '/prod/' },
        dataDir: join(dir, 'state'),
        http: { host: '::1', port: 8443, bodyLimit: 4096 },
        stores: [
          { name: 'orders', type: 'sqlite', options: { path: '/var/orders.db' } },
          { name: 'audit', type: 'jsonl', options: { dir: './audit' } },
          { name: 'bare', type: 'custom' },
        ],
        plugins: ['./plugins/jsonl.ts', '../shared/x.ts', '/abs/p.ts', 'commitd-plugin-foo'],
        retention: '2h',
        sessionIdleTimeout: 90,
        leaseTtl: '5s',
        maxOpenSessions: 50,
        instanceId: 'node-a',
        token: 'from-file',
      }),
    );
    const confDir = join(dir, 'conf');
    assert.equal(config.configFile, join(confDir, 'commitd.json'));
    assert.deepEqual(config.etcd, { endpoints: ['https://etcd:2379'], namespace: '/prod/' });
    assert.equal(config.dataDir, join(dir, 'state'));
    assert.deepEqual([config.host, config.port, config.bodyLimit], ['::1', 8443, 4096]);
    assert.deepEqual(config.stores, [
      { name: 'orders', type: 'sqlite', options: { path: '/var/orders.db' } },
      { name: 'audit', type: 'jsonl', options: { dir: './audit' } },
      { name: 'bare', type: 'custom', options: {} },
    ]);
    assert.deepEqual(config.plugins, [join(confDir, 'plugins/jsonl.ts'), join(dir, 'shared/x.ts'), '/abs/p.ts', 'commitd-plugin-foo']);
    assert.equal(config.pluginBaseDir, confDir);
    assert.equal(config.retentionSeconds, 7200);
    assert.equal(config.idleTimeoutMs, 90_000);
    assert.equal(config.leaseTtlSeconds, 5);
    assert.equal(config.maxOpenSessions, 50);
    assert.equal(config.instanceId, 'node-a');
    assert.equal(config.token, 'from-file');
  });

  it('lets environment variables override the file', () => {
    const config = loadConfig(
      withFile(
        { etcd: { endpoints: ['etcd-a:2379'], namespace: '/file/' }, dataDir: '/file', http: { host: 'file-host', port: 1111 }, token: 'file' },
        {
          COMMITD_ETCD_ENDPOINTS: 'etcd-b:2379',
          COMMITD_ETCD_NAMESPACE: '/env/',
          COMMITD_DATA_DIR: join(dir, 'env'),
          COMMITD_HOST: 'env-host',
          COMMITD_PORT: '2222',
          COMMITD_TOKEN: 'env',
        },
      ),
    );
    assert.deepEqual(config.etcd, { endpoints: ['etcd-b:2379'], namespace: '/env/' });
    assert.equal(config.dataDir, join(dir, 'env'));
    assert.deepEqual([config.host, config.port, config.token], ['env-host', 2222, 'env']);
    // The default store follows the winning data dir; settings the env does not name come from the file.
    assert.deepEqual(config.stores, [{ name: 'main', type: 'sqlite', options: { path: join(dir, 'env', 'main.db') } }]);
    assert.equal(loadConfig(withFile({ http: { port: 1111 } }, { COMMITD_HOST: 'h' })).port, 1111);
  });

  it('keeps an explicitly empty store list (stores added at run time)', () => {
    assert.deepEqual(loadConfig(withFile({ stores: [] })).stores, []);
  });

  it('names the variable for each kind of invalid environment value', () => {
    rejects({ COMMITD_PORT: 'abc' }, 'COMMITD_PORT: must be an integer 1–65535, got "abc"');
    rejects({ COMMITD_PORT: '70000' }, 'COMMITD_PORT: must be an integer 1–65535, got "70000"');
    rejects({ COMMITD_PORT: '0' }, /^COMMITD_PORT: /);
    rejects({ COMMITD_ETCD_ENDPOINTS: 'http://a:2379,not an endpoint' }, /^COMMITD_ETCD_ENDPOINTS: "not an endpoint" is not an endpoint/);
    rejects({ COMMITD_LOG_LEVEL: 'loud' }, /^COMMITD_LOG_LEVEL: must be one of fatal, error, warn, info, debug, trace, silent, got "loud"$/);
    rejects({ COMMITD_CONFIG: join(dir, 'missing.json') }, `COMMITD_CONFIG: cannot read ${join(dir, 'missing.json')}: no such file`);
  });

  it('names the file and the field for each kind of invalid file', () => {
    const name = join(dir, 'conf', 'commitd.json');
    const cases: [unknown, string | RegExp][] = [
      ['{"http": ', new RegExp(`^config file ${name}: invalid JSON: `)],
      [[], `config file ${name}: (root): must be object`],
      [{ port: 80 }, `config file ${name}: port: is not allowed`],
      [{ http: { port: 'x' } }, `config file ${name}: http.port: must be integer`],
      [{ http: { port: 0 } }, `config file ${name}: http.port: must be >= 1`],
      [{ http: { tls: true } }, `config file ${name}: http.tls: is not allowed`],
      [
        {
          stores: [
            { name: 'a', type: 'sqlite' },
            { name: 'b', type: 3 },
          ],
        },
        `config file ${name}: stores[1].type: must be string`,
      ],
      [{ stores: [{ type: 'sqlite' }] }, `config file ${name}: stores[0].name: is required`],
      [{ stores: [{ name: 'has space', type: 'sqlite' }] }, new RegExp(`^config file ${name}: stores\\[0\\]\\.name: must match pattern`)],
      [
        {
          stores: [
            { name: 'a', type: 'sqlite' },
            { name: 'a', type: 'sqlite' },
          ],
        },
        `config file ${name}: stores[1].name: duplicate store name "a"`,
      ],
      [{ plugins: ['./ok.ts', 7] }, `config file ${name}: plugins[1]: must be string`],
      [{ etcd: { endpoints: 'a:1' } }, `config file ${name}: etcd.endpoints: must be array`],
      [{ retention: true }, `config file ${name}: retention: must be number or string`],
      [
        { retention: '1 week' },
        `config file ${name}: retention: must be a positive duration such as "24h", "60s", "500ms" or a number of seconds, got "1 week"`,
      ],
      [{ sessionIdleTimeout: -1 }, new RegExp(`^config file ${name}: sessionIdleTimeout: must be a positive duration`)],
      [{ maxOpenSessions: 1.5 }, `config file ${name}: maxOpenSessions: must be integer`],
    ];
    for (const [contents, message] of cases) rejects(withFile(contents), message);
  });
});

describe('parseDuration', () => {
  it('takes seconds as a number, or a number with a unit', () => {
    assert.equal(parseDuration(1.5, 'x'), 1500);
    assert.equal(parseDuration('500ms', 'x'), 500);
    assert.equal(parseDuration('60s', 'x'), 60_000);
    assert.equal(parseDuration('2m', 'x'), 120_000);
    assert.equal(parseDuration('24h', 'x'), 86_400_000);
    assert.equal(parseDuration('1d', 'x'), 86_400_000);
    assert.throws(() => parseDuration('0s', 'x'), ConfigError);
    assert.throws(() => parseDuration('5', 'x'), { message: /^x: must be a positive duration/ });
  });
});

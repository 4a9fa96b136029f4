import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { loadPlugin, PluginLoadError } from '../src/stores/plugins.ts';
import { InvalidChangeError, InvalidStoreError, StoreRegistry } from '../src/stores/registry.ts';
import { sqliteStoreType } from '../src/stores/sqlite/store.ts';
import type { StoreSession } from '../src/stores/api.ts';
import { AlreadyCommittedError } from '../src/errors/core.ts';
import { keyBytes, toHex } from '../src/core/keys.ts';

const testDir = dirname(fileURLToPath(import.meta.url));
const repoDir = dirname(testDir);

describe('plugins', () => {
  let dir: string;
  let registry: StoreRegistry;
  const ctx = () => ({ logger: pino({ level: 'silent' }), dataDir: dir, retentionSeconds: 60 });

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'commitd-plugins-'));
    registry = new StoreRegistry();
  });
  afterEach(async () => {
    await registry.closeAll();
    rmSync(dir, { recursive: true, force: true });
  });

  it('loads the example jsonl plugin (relative to baseDir) and commits through the helper', async () => {
    const jsonl = await loadPlugin('./examples/plugins/jsonl-store.ts', repoDir);
    assert.equal(jsonl.type, 'jsonl');
    registry.registerType(jsonl);
    const store = await registry.add({ name: 'audit', type: 'jsonl', options: { dir: join(dir, 'audit') } }, ctx());
    const changes = [{ record: { event: 'placed', id: 1 } }, { record: { event: 'paid', id: 1 } }];
    for (const change of changes) registry.validateChange('audit', change);

    const commit = async (session: StoreSession, recovery = false) => {
      await (recovery ? session.beginRecovery(keyBytes('order-1')) : session.begin(keyBytes('order-1')));
      assert.equal(session.skipping, recovery);
      for (const change of changes) await session.apply(change);
      return session.commit(keyBytes('order-1'));
    };
    const id = await commit(store.session());
    const files = readdirSync(join(dir, 'audit'));
    assert.equal(files.length, 1, `one file, no temp left: ${files.join(', ')}`);
    const lines = readFileSync(join(dir, 'audit', files[0]!), 'utf8')
      .trim()
      .split('\n')
      .map((line) => JSON.parse(line));
    assert.deepEqual(lines, [{ commitd: { key: 'order-1', sessionId: toHex(id) } }, ...changes.map((c) => c.record)]);

    // Recovery skips; a fresh begin on the key is refused; a racer with the same changes skips.
    assert.deepEqual(await commit(store.session(), true), id);
    await assert.rejects(store.session().begin(keyBytes('order-1')), AlreadyCommittedError);
    const racers = [store.session(), store.session()];
    await Promise.all(racers.map((racer) => racer.begin(keyBytes('order-2'))));
    for (const racer of racers) for (const change of changes) await racer.apply(change);
    const ids = await Promise.all(racers.map((racer) => racer.commit(keyBytes('order-2'))));
    assert.equal(toHex(ids[0]!), toHex(ids[1]!));
    assert.equal(readdirSync(join(dir, 'audit')).length, 2);

    assert.throws(
      () => registry.validateChange('audit', { record: {}, append: {} }),
      (err: unknown) => {
        assert.ok(err instanceof InvalidChangeError);
        assert.equal(err.code, 'INVALID_REQUEST');
        assert.match(err.message, /^change for store "audit" \(jsonl\): change\.append: is not allowed$/);
        return true;
      },
    );
  });

  const broken: [string, RegExp][] = [
    ['./fixtures/plugins/no-default.ts', /^plugin "\.\/fixtures\/plugins\/no-default\.ts": no default export/],
    ['./fixtures/plugins/missing-create.ts', /^plugin "\.\/fixtures\/plugins\/missing-create\.ts": field create is missing$/],
    ['./fixtures/plugins/wrong-type.ts', /^plugin "\.\/fixtures\/plugins\/wrong-type\.ts": field type must be a non-empty string, got number$/],
    ['./fixtures/plugins/import-throws.ts', /^plugin "\.\/fixtures\/plugins\/import-throws\.ts": import threw: plugin exploded while loading$/],
    ['./fixtures/plugins/nowhere.ts', /^plugin "\.\/fixtures\/plugins\/nowhere\.ts": module not found \(looked for \/.*nowhere\.ts\)$/],
    ['commitd-no-such-plugin-package', /^plugin "commitd-no-such-plugin-package": module not found: /],
  ];
  for (const [module, message] of broken) {
    it(`fails with one line naming the module: ${module}`, async () => {
      await assert.rejects(loadPlugin(module, testDir), (err: unknown) => {
        assert.ok(err instanceof PluginLoadError, String(err));
        assert.equal(err.code, 'PLUGIN_LOAD_FAILED');
        assert.equal(err.module, module);
        assert.doesNotMatch(err.message, /\n/);
        assert.match(err.message, message);
        return true;
      });
    });
  }

  it('checks what a plugin create() returns', async () => {
    registry.registerType(await loadPlugin('./fixtures/plugins/bad-store.ts', testDir));
    await assert.rejects(registry.add({ name: 'hollow', type: 'hollow', options: {} }, ctx()), /create\(\) must return a store/);
    assert.deepEqual(registry.list(), []);
  });
});

describe('StoreRegistry', () => {
  let dir: string;
  let registry: StoreRegistry;
  const ctx = () => ({ logger: pino({ level: 'silent' }), dataDir: dir, retentionSeconds: 60 });

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'commitd-registry-'));
    registry = new StoreRegistry();
    registry.registerType(sqliteStoreType);
  });
  afterEach(async () => {
    await registry.closeAll();
    rmSync(dir, { recursive: true, force: true });
  });

  it('adds, lists (sorted), gets and removes stores', async () => {
    await registry.add({ name: 'orders', type: 'sqlite', options: { path: join(dir, 'orders.db') } }, ctx());
    await registry.add({ name: 'audit', type: 'sqlite', options: { path: join(dir, 'audit.db') } }, ctx());
    assert.deepEqual(registry.list(), [
      { name: 'audit', type: 'sqlite' },
      { name: 'orders', type: 'sqlite' },
    ]);
    assert.equal(registry.get('orders')?.name, 'orders');
    await registry.remove('orders');
    assert.equal(registry.get('orders'), undefined);
    await registry.remove('orders');
    assert.deepEqual(registry.list(), [{ name: 'audit', type: 'sqlite' }]);
  });

  it('refuses duplicate types and names, unknown types and invalid options with one clear line', async () => {
    assert.throws(() => registry.registerType(sqliteStoreType), { code: 'ALREADY_REGISTERED' });
    await registry.add({ name: 'main', type: 'sqlite', options: { path: join(dir, 'main.db') } }, ctx());
    const cases: [unknown, RegExp][] = [
      [{ name: 'main', type: 'sqlite', options: { path: join(dir, 'other.db') } }, /^store "main": a store with this name already exists$/],
      [{ name: 'x', type: 'mongo', options: {} }, /^store "x": unknown store type "mongo" \(known: sqlite\)$/],
      [{ name: 'x', type: 'sqlite', options: {} }, /^store "x" \(sqlite\): options\.path: is required$/],
      [{ name: 'x', type: 'sqlite', options: { path: 7 } }, /^store "x" \(sqlite\): options\.path: must be string$/],
      [{ name: 'x', type: 'sqlite', options: { path: 'a.db', size: 1 } }, /^store "x" \(sqlite\): options\.size: is not allowed$/],
    ];
    for (const [definition, message] of cases) {
      await assert.rejects(registry.add(definition as never, ctx()), (err: unknown) => {
        assert.ok(err instanceof InvalidStoreError, String(err));
        assert.equal(err.code, 'INVALID_REQUEST');
        assert.match(err.message, message);
        return true;
      });
    }
  });

  it('validates changes against the store type schema', async () => {
    await registry.add({ name: 'main', type: 'sqlite', options: { path: join(dir, 'main.db') } }, ctx());
    registry.validateChange('main', { sql: 'SELECT ?', params: [true] });
    registry.validateChange('main', { sql: 'SELECT @a', params: { a: null } });
    const cases: [string, unknown, RegExp][] = [
      ['main', { sql: 'SELECT 1', extra: 1 }, /change\.extra: is not allowed$/],
      ['main', { params: [] }, /change\.sql: is required$/],
      ['main', { sql: 'SELECT ?', params: [{ a: 1 }] }, /change\.params\[0\]: must be/],
      ['main', 'SELECT 1', /change: must be object$/],
      ['nope', { sql: 'SELECT 1' }, /^unknown store "nope"$/],
    ];
    for (const [store, change, message] of cases) {
      assert.throws(
        () => registry.validateChange(store, change),
        (err: unknown) => {
          assert.ok(err instanceof InvalidChangeError, String(err));
          assert.match(err.message, message);
          return true;
        },
      );
    }
  });
});

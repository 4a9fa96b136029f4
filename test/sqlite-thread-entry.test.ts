/**
 * Where a sqlite store's thread starts (`src/stores/sqlite/thread-entry.ts`): the bundle
 * `npm run build` makes, while every source file it was built from is unchanged, and the
 * source through tsx otherwise. Both entries must behave the same: a session commits, and
 * the guard that keeps changes off commitd's marker table is loaded.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { pathToFileURL } from 'node:url';
import { BUNDLE_MANIFEST, currentBundle, SOURCE_ENTRY, threadEntry, withoutTsx, type ThreadEntry } from '../src/stores/sqlite/thread-entry.ts';
import { SqliteThread } from '../src/stores/sqlite/thread.ts';
import { ids, sqliteRun } from './support/rows.ts';

const dir = mkdtempSync(join(tmpdir(), 'commitd-thread-entry-'));
after(() => rmSync(dir, { recursive: true, force: true }));

/** The manifest `npm run build` wrote, with `edit` applied, at a path of its own. */
function manifestWith(name: string, edit: (inputs: Record<string, { size: number; mtimeMs: number }>) => void) {
  const manifest = JSON.parse(readFileSync(BUNDLE_MANIFEST, 'utf8'));
  edit(manifest.inputs);
  const path = join(dir, name);
  writeFileSync(path, JSON.stringify(manifest));
  return pathToFileURL(path);
}

describe('the entry of a sqlite store thread', () => {
  it('is the bundle after a build (npm test builds first), started without tsx', () => {
    const bundle = currentBundle();
    assert.ok(bundle, 'native/build/sqlite-thread.mjs is missing or stale: run `npm run build`');
    const entry = threadEntry();
    assert.equal(entry.url.href, bundle.href);
    assert.ok(entry.execArgv, 'the bundle gets Node options of its own');
    assert.ok(!entry.execArgv.some((arg) => /tsx/.test(arg)), `no tsx in ${entry.execArgv.join(' ')}`);
  });

  it('is not the bundle once a file it was built from changed, or without a manifest or bundle', () => {
    const first = (inputs: Record<string, unknown>) => Object.keys(inputs)[0] as string;
    const grown = manifestWith('grown.json', (inputs) => {
      (inputs[first(inputs)] as { size: number }).size += 1;
    });
    const touched = manifestWith('touched.json', (inputs) => {
      (inputs[first(inputs)] as { mtimeMs: number }).mtimeMs -= 1000;
    });
    const empty = manifestWith('empty.json', (inputs) => {
      for (const path of Object.keys(inputs)) delete inputs[path];
    });
    assert.equal(currentBundle(grown), undefined, 'a source file of another size');
    assert.equal(currentBundle(touched), undefined, 'a source file written since');
    assert.equal(currentBundle(empty), undefined, 'a manifest listing nothing');
    assert.equal(currentBundle(pathToFileURL(join(dir, 'none.json'))), undefined, 'no manifest');
    const unchanged = manifestWith('unchanged.json', () => {});
    assert.ok(currentBundle(unchanged), 'the same manifest, unchanged');
    assert.equal(currentBundle(unchanged, pathToFileURL(join(dir, 'none.mjs'))), undefined, 'no bundle');
  });

  it('drops only the options that load tsx', () => {
    assert.deepEqual(withoutTsx(['--import', 'tsx', '--max-old-space-size=256']), ['--max-old-space-size=256']);
    assert.deepEqual(withoutTsx(['--import=tsx/esm', '--require', 'tsx/cjs', '-r', 'tsx']), []);
    assert.deepEqual(withoutTsx(['--import', './otel.mjs', '--cpu-prof']), ['--import', './otel.mjs', '--cpu-prof']);
  });

  const bundled = threadEntry();
  for (const [name, entry] of [
    ['the bundle', bundled],
    ['the source through tsx', { url: SOURCE_ENTRY }],
  ] as [string, ThreadEntry][]) {
    it(`${name}: a session commits, and a change to the marker table is refused`, async (t) => {
      const path = join(dir, `${name.replace(/\W+/g, '-')}.db`);
      sqliteRun(path, 'CREATE TABLE t (id INTEGER PRIMARY KEY)');
      const thread = await SqliteThread.open({ path }, entry);
      t.after(() => thread.close());
      const key = new TextEncoder().encode('entry-key');
      const id = new Uint8Array(8).fill(7);
      const driver = thread.driver();
      assert.equal(await driver.openAndPrepare?.(key, [{ sql: 'INSERT INTO t (id) VALUES (?)', params: [1] }], id), undefined);
      await driver.decide?.(key, id);
      await driver.commit(key, id);
      assert.deepEqual(ids(path), [1]);

      const refused = thread.driver();
      await assert.rejects(
        refused.openAndPrepare?.(new TextEncoder().encode('other'), [{ sql: 'DELETE FROM commitd_sessions' }], id) as Promise<unknown>,
        /commitd_sessions/,
      );
      assert.deepEqual(ids(path), [1]);
    });
  }
});

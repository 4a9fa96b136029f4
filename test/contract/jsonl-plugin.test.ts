/**
 * The store contract against the example plugin examples/plugins/jsonl-store.ts, loaded
 * through its module as the `plugins` config loads it: a plugin passes the same suite as
 * the built-in types.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { loadPlugin } from '../../src/stores/plugins.ts';
import { makeTempDir, removeTempDir } from '../harness/child.ts';
import { storeContract } from './store-contract.ts';

const repoDir = fileURLToPath(new URL('../../', import.meta.url));

interface JsonlChange {
  readonly record: { readonly tag: string; readonly step: number };
}

/** How many committed files (temp files start with a dot) hold the first record of `tag`'s sample. */
async function filesWith(dir: string, tag: string): Promise<number> {
  let count = 0;
  for (const name of await readdir(dir)) {
    if (name.startsWith('.')) continue;
    const lines = (await readFile(join(dir, name), 'utf8'))
      .trim()
      .split('\n')
      .map((line) => JSON.parse(line) as unknown);
    if (lines.some((line) => JSON.stringify(line) === JSON.stringify({ tag, step: 1 }))) count += 1;
  }
  return count;
}

storeContract<JsonlChange>({
  name: 'jsonl plugin',
  unavailable: () => undefined,
  async start() {
    const jsonl = await loadPlugin('./examples/plugins/jsonl-store.ts', repoDir);
    const dir = makeTempDir('contract-jsonl');
    return {
      open: async () => jsonl.create({ dir }, { name: 'contract', logger: pino({ level: 'silent' }), dataDir: dir, retentionSeconds: 60 }),
      changes: (tag) => [{ record: { tag, step: 1 } }, { record: { tag, step: 2 } }],
      applied: (tag) => filesWith(dir, tag),
      stop: () => removeTempDir(dir),
    };
  },
});

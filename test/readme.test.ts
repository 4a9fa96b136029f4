/**
 * The README as a newcomer reads it: its first lines are the two commands a fresh clone
 * needs (install and start; install what the tests need and test), `.ci/run` still runs the
 * README's test command, and every link stays inside the repository.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, it } from 'node:test';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const README = readFileSync(join(ROOT, 'README.md'), 'utf8');

describe('README', () => {
  it('starts with the two commands a fresh clone needs, and nothing else', () => {
    const lines = README.split('\n');
    assert.deepEqual(lines.slice(0, 6), ['# commitd', '', '```sh', 'npm ci && npm start', 'bash .ci/run', '```']);
    const ci = readFileSync(join(ROOT, '.ci', 'run'), 'utf8');
    assert.match(ci, /^npm ci$/m, '.ci/run installs the dependencies');
    assert.match(ci.trimEnd(), /\nnpm test$/, ".ci/run ends by running the README's test command, npm test");
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> };
    assert.ok(pkg.scripts.start && pkg.scripts.test);
  });

  it('links only to files inside the repository', () => {
    for (const file of ['README.md', ...['api.md', 'operations.md'].map((name) => join('docs', name))]) {
      const text = readFileSync(join(ROOT, file), 'utf8');
      for (const [, target] of text.matchAll(/\]\(([^)\s]+)\)/g)) {
        const path = (target ?? '').split('#')[0] ?? '';
        if (/^https?:/.test(target ?? '')) assert.fail(`${file} links outside the repository: ${target}`);
        if (path === '') continue;
        const absolute = resolve(dirname(join(ROOT, file)), path);
        assert.ok(!relative(ROOT, absolute).startsWith('..'), `${file}: ${target} points outside the repository`);
        assert.ok(existsSync(absolute), `${file}: ${target} does not exist`);
      }
    }
  });
});

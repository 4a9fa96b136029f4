/**
 * The README as a newcomer reads it: its first lines are the two commands a fresh clone
 * needs (install and start; install what the tests need and test), `.ci/run` still runs the
 * README's test command, every link stays inside the repository, and the quick start's first
 * request — a table and its first row in one one-shot — commits on the default store.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, it } from 'node:test';
import { sqliteRows } from './support/rows.ts';
import { startTestService } from './support/service.ts';

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

  it('quick start: the first request creates a table and inserts into it, in one session', async () => {
    const quickStart = README.slice(README.indexOf('## Quick start'));
    const body = /curl -s localhost:8080\/v1\/commits -H 'content-type: application\/json' -d '([^']*)'/.exec(quickStart)?.[1];
    assert.ok(body, 'the quick start opens with a one-shot commit');
    const service = await startTestService({ kv: 'sqlite', stores: [] });
    try {
      await service.coordinator.addStore({ name: 'main', type: 'sqlite', options: { path: join(service.dir, 'main.db') } });
      const answer = await service.app.inject({ method: 'POST', url: '/v1/commits', headers: { 'content-type': 'application/json' }, payload: body });
      assert.equal(answer.statusCode, 200, answer.body);
      assert.equal(answer.json().state, 'committed');
      assert.deepEqual(sqliteRows(join(service.dir, 'main.db'), 'SELECT id, total FROM orders'), [{ id: 1, total: 12.5 }]);
    } finally {
      await service.dispose();
    }
  });
});

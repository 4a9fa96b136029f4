/**
 * The OpenAPI document commitd serves at /docs/json, as tools read it: Redocly's recommended
 * ruleset and Spectral's `spectral:oas` find nothing, openapi-typescript generates named
 * types that compile, and docs/api.md covers every operation.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { createConfig, lintFromString } from '@redocly/openapi-core';
import spectralCore from '@stoplight/spectral-core';
import spectralParsers from '@stoplight/spectral-parsers';
import spectralRulesets from '@stoplight/spectral-rulesets';
import openapiTS from 'openapi-typescript';
import { startTestService, type TestService } from './support/service.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const METHODS = ['get', 'put', 'post', 'delete', 'patch', 'head', 'options'] as const;

interface Operation {
  readonly operationId?: string;
  readonly description?: string;
  readonly requestBody?: { readonly required?: boolean };
  readonly responses: Record<
    string,
    { readonly description?: string; readonly headers?: Record<string, unknown>; readonly content?: Record<string, { schema?: { $ref?: string } }> }
  >;
}
interface OpenApiDocument {
  readonly paths: Record<string, Partial<Record<(typeof METHODS)[number], Operation>>>;
  readonly components: { readonly schemas: Record<string, unknown> };
}

function operations(document: OpenApiDocument): { method: string; path: string; operation: Operation }[] {
  return Object.entries(document.paths).flatMap(([path, item]) =>
    METHODS.flatMap((method) => (item[method] === undefined ? [] : [{ method: method.toUpperCase(), path, operation: item[method] }])),
  );
}

describe('the OpenAPI document at /docs/json', () => {
  let service: TestService;
  let text: string;
  let document: OpenApiDocument;

  before(async () => {
    service = await startTestService({ kv: 'sqlite' });
    const answer = await service.app.inject({ method: 'GET', url: '/docs/json' });
    assert.equal(answer.statusCode, 200);
    text = answer.body;
    document = JSON.parse(text) as OpenApiDocument;
  });
  after(() => service?.dispose());

  it('passes redocly lint with the recommended ruleset: no error, no warning', async () => {
    const config = await createConfig({ extends: ['recommended'] });
    const problems = await lintFromString({ source: text, absoluteRef: 'openapi.json', config });
    assert.deepEqual(
      problems.map((problem) => `${problem.severity} ${problem.ruleId}: ${problem.message} at ${problem.location[0]?.pointer ?? '?'}`),
      [],
    );
  });

  it('passes spectral:oas (recommended): no error, no warning', async () => {
    const spectral = new spectralCore.Spectral();
    spectral.setRuleset({ extends: [[spectralRulesets.oas as never, 'recommended']] });
    const results = await spectral.run(new spectralCore.Document(text, spectralParsers.Json, 'openapi.json'));
    assert.deepEqual(
      results.map((result) => `${result.severity} ${result.code}: ${result.message} at ${result.path.join('.')}`),
      [],
    );
  });

  it('describes every operation and every response (no "Default Response")', () => {
    for (const { method, path, operation } of operations(document)) {
      assert.ok(operation.description, `${method} ${path} has no description`);
      for (const [status, response] of Object.entries(operation.responses)) {
        assert.ok(response.description && response.description !== 'Default Response', `${method} ${path} ${status}: ${response.description}`);
      }
    }
  });

  it('names its schemas: every JSON body and answer is a $ref to a component', () => {
    for (const name of [
      'CommittedReply',
      'ActiveReply',
      'SessionReply',
      'SessionListReply',
      'Problem',
      'CommitOnceBody',
      'ApplyBody',
      'BeginBody',
      'StoreInfoReply',
    ]) {
      assert.ok(document.components.schemas[name], `no component ${name}`);
    }
    for (const { method, path, operation } of operations(document)) {
      for (const [status, response] of Object.entries(operation.responses)) {
        for (const [type, media] of Object.entries(response.content ?? {})) {
          if (!type.endsWith('json')) continue;
          const schema = media.schema as { $ref?: string; anyOf?: { $ref?: string }[] } | undefined;
          const refs = schema?.anyOf ? schema.anyOf.map((member) => member.$ref) : [schema?.$ref];
          for (const ref of refs) assert.match(ref ?? '(inline)', /^#\/components\/schemas\/[A-Z]\w+$/, `${method} ${path} ${status} ${type}`);
        }
      }
    }
  });

  it('makes the body optional exactly where the server reads an absent body as {} (begin, commit, cancel)', () => {
    const required = Object.fromEntries(
      operations(document)
        .filter(({ operation }) => operation.requestBody)
        .map(({ operation }) => [operation.operationId, operation.requestBody?.required]),
    );
    assert.deepEqual(required, {
      beginSession: false,
      applyChanges: true,
      commitSession: false,
      cancelSession: false,
      resolveSession: true,
      commitOnce: true,
      addStore: true,
    });
  });

  it('declares Retry-After on every 503', () => {
    const unavailable = operations(document).filter(({ operation }) => operation.responses['503']);
    assert.ok(unavailable.length > 5);
    for (const { method, path, operation } of unavailable) assert.ok(operation.responses['503']?.headers?.['Retry-After'], `${method} ${path}`);
  });

  it('gives openapi-typescript named types that compile', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'commitd-openapi-'));
    try {
      writeFileSync(join(dir, 'api.d.ts'), await openapiTS(JSON.parse(text)));
      writeFileSync(
        join(dir, 'use.ts'),
        [
          "import type { components, operations } from './api.js';",
          "type Committed = components['schemas']['CommittedReply'];",
          "export const committed: Committed = { key: 'k', state: 'committed', sessionId: 'ff', stores: { main: '01' } };",
          "export const body: components['schemas']['CommitOnceBody'] = { key: 'k', changes: { main: [{ sql: 'SELECT 1' }] } };",
          "export const answer: operations['commitOnce']['responses'][200]['content']['application/json'] = committed;",
          "export const problem: components['schemas']['Problem'] = { type: 't', title: 'x', status: 503, detail: 'd', code: 'unavailable' };",
          '',
        ].join('\n'),
      );
      const tsc = join(ROOT, 'node_modules', '.bin', 'tsc');
      const args = ['--noEmit', '--strict', '--module', 'nodenext', '--moduleResolution', 'nodenext', '--target', 'es2022', 'use.ts', 'api.d.ts'];
      await promisify(execFile)(tsc, args, { cwd: dir }).catch((error: { stdout?: string }) => assert.fail(`tsc: ${error.stdout ?? String(error)}`));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('docs/api.md documents every operation', () => {
    const reference = readFileSync(join(ROOT, 'docs', 'api.md'), 'utf8');
    for (const { method, path } of operations(document)) {
      const documented = path.replace(/\{(\w+)\}/g, ':$1');
      assert.ok(reference.includes(`${method} ${documented}`), `docs/api.md does not mention ${method} ${documented}`);
    }
  });
});

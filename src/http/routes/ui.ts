/**
 * The operator console at `/ui`: a fixed set of static files, read once at start-up from
 * the repository's `ui/` folder and from the installed packages it is built with (preact,
 * htm, uPlot). Nothing is built and no path from the request reaches the file system.
 * @module
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyPluginAsync } from 'fastify';

const require = createRequire(import.meta.url);
const UI_DIR = fileURLToPath(new URL('../../../ui/', import.meta.url));

/** A file of an installed package, relative to its folder (found from its entry point: `exports` may hide package.json). */
function packageFile(pkg: string, file: string): string {
  let dir = path.dirname(require.resolve(pkg));
  while (path.basename(dir) !== pkg && path.dirname(dir) !== dir) dir = path.dirname(dir);
  return path.join(dir, file);
}

const JS = 'text/javascript; charset=utf-8';
const CSS = 'text/css; charset=utf-8';

/** URL → where it comes from and what it is. */
const FILES: Readonly<Record<string, { readonly file: string; readonly type: string }>> = {
  '/ui/console.js': { file: path.join(UI_DIR, 'console.js'), type: JS },
  '/ui/console.css': { file: path.join(UI_DIR, 'console.css'), type: CSS },
  '/ui/vendor/preact.js': { file: packageFile('preact', 'dist/preact.module.js'), type: JS },
  '/ui/vendor/hooks.js': { file: packageFile('preact', 'hooks/dist/hooks.module.js'), type: JS },
  '/ui/vendor/htm.js': { file: packageFile('htm', 'dist/htm.module.js'), type: JS },
  '/ui/vendor/uplot.js': { file: packageFile('uplot', 'dist/uPlot.esm.js'), type: JS },
  '/ui/vendor/uplot.css': { file: packageFile('uplot', 'dist/uPlot.min.css'), type: CSS },
};

/** The import map is the page's only inline script; the policy allows it by its hash and nothing else inline. */
function contentSecurityPolicy(page: string): string {
  const inline = /<script type="importmap">([\s\S]*?)<\/script>/.exec(page)?.[1] ?? '';
  const hash = createHash('sha256').update(inline).digest('base64');
  return [
    "default-src 'none'",
    `script-src 'self' 'sha256-${hash}'`,
    "style-src 'self'",
    "connect-src 'self'",
    "img-src 'self' data:",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
  ].join('; ');
}

export const uiRoutes: FastifyPluginAsync = async (app) => {
  const page = readFileSync(path.join(UI_DIR, 'index.html'), 'utf8');
  const headers = {
    'cache-control': 'no-cache',
    'content-security-policy': contentSecurityPolicy(page),
    'x-content-type-options': 'nosniff',
    'referrer-policy': 'no-referrer',
  };
  const schema = { hide: true };

  for (const url of ['/ui', '/ui/']) {
    app.get(url, { schema }, async (_request, reply) => reply.headers(headers).type('text/html; charset=utf-8').send(page));
  }
  for (const [url, { file, type }] of Object.entries(FILES)) {
    const body = readFileSync(file);
    app.get(url, { schema }, async (_request, reply) => reply.headers(headers).type(type).send(body));
  }
};

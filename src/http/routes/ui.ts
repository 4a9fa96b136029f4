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
import { serialize as serializeCookie } from 'cookie';
import type { FastifyContextConfig, FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';
import { CONSOLE_COOKIE } from '../auth.ts';
import { HttpProblem, handleError } from '../problems.ts';
import type { TokenSet } from '../tokens.ts';

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
  '/ui/login.css': { file: path.join(UI_DIR, 'login.css'), type: CSS },
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

/** True when the client is a browser navigating (it asks for HTML). */
function wantsHtml(request: FastifyRequest): boolean {
  return /\btext\/html\b/.test(request.headers.accept ?? '');
}

export interface UiRoutesOptions {
  /** The tokens commitd accepts; empty → no auth (loopback only), no login. */
  readonly tokens: TokenSet;
}

/** Files the login page needs: served without a token (they hold no data). */
const PUBLIC_FILES = new Set(['/ui/login.css']);

/** The largest login form accepted, in bytes (a token and its field name). */
const LOGIN_BODY_LIMIT = 8 * 1024;

export const uiRoutes: FastifyPluginAsync<UiRoutesOptions> = async (app, { tokens }) => {
  const page = readFileSync(path.join(UI_DIR, 'index.html'), 'utf8');
  const login = readFileSync(path.join(UI_DIR, 'login.html'), 'utf8');
  const headers = {
    'cache-control': 'no-cache',
    'content-security-policy': contentSecurityPolicy(page),
    'x-content-type-options': 'nosniff',
    'referrer-policy': 'no-referrer',
  };
  const schema = { hide: true };
  const loginPage = (reply: FastifyReply, status: number, message?: string) =>
    reply
      .code(status)
      .headers(headers)
      .header('www-authenticate', 'Bearer realm="commitd"')
      .type('text/html; charset=utf-8')
      .send(login.replace('<!--message-->', message ? `<p class="problem" role="alert">${message}</p>` : ''));

  // A browser asking for a console page without a valid credential gets 401 with the login
  // form (its POST sets the cookie the pages then carry); any other client gets problem+json.
  app.setErrorHandler((error, request, reply) => {
    if (error instanceof HttpProblem && error.status === 401 && wantsHtml(request)) return loginPage(reply, 401);
    return handleError(error, request, reply);
  });
  app.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string', bodyLimit: LOGIN_BODY_LIMIT }, (_request, body, done) => {
    done(null, new URLSearchParams(String(body)));
  });

  for (const url of ['/ui', '/ui/']) {
    app.get(url, { schema, config: { console: true } }, async (_request, reply) => reply.headers(headers).type('text/html; charset=utf-8').send(page));
  }
  for (const [url, { file, type }] of Object.entries(FILES)) {
    const body = readFileSync(file);
    const config: FastifyContextConfig = PUBLIC_FILES.has(url) ? { public: true } : { console: true };
    app.get(url, { schema, config }, async (_request, reply) => reply.headers(headers).type(type).send(body));
  }

  const cookie = (request: FastifyRequest, value: string, maxAge?: number) =>
    serializeCookie(CONSOLE_COOKIE, value, { httpOnly: true, sameSite: 'strict', path: '/', secure: request.protocol === 'https', maxAge });

  app.post('/ui/login', { schema, config: { public: true } }, async (request, reply) => {
    const form = request.body instanceof URLSearchParams ? request.body : new URLSearchParams();
    const token = form.get('token') ?? '';
    if (tokens.size === 0) return reply.redirect('/ui', 303);
    if (tokens.find(token) === undefined) {
      if (wantsHtml(request)) return loginPage(reply, 401, 'That token is not valid.');
      throw new HttpProblem(401, 'unauthorized', 'the token is not valid', { 'www-authenticate': 'Bearer realm="commitd"' });
    }
    return reply.header('set-cookie', cookie(request, token)).redirect('/ui', 303);
  });
  app.post('/ui/logout', { schema, config: { public: true } }, async (request, reply) =>
    reply.header('set-cookie', cookie(request, '', 0)).redirect('/ui', 303),
  );
};

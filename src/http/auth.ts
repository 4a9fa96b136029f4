/**
 * Bearer-token auth with scopes, and the rule that without a token commitd serves on loopback only
 * (DESIGN.md, Configuration: "unset → no auth on loopback only").
 * @module
 */
import { isIPv4, isIPv6 } from 'node:net';
import { parse as parseCookie } from 'cookie';
import type { FastifyRequest, RouteOptions, onRequestAsyncHookHandler, preHandlerAsyncHookHandler } from 'fastify';
import './principal.ts';
import { HttpProblem } from './problems.ts';
import type { AccessToken, Scope, TokenSet } from './tokens.ts';

/** What a request writes to, as its route's `config.storesOf` finds it. */
export type StoresNamed = readonly string[] | 'all' | undefined;

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Served without a token even when tokens are configured (`/healthz`, `/readyz`). */
    readonly public?: boolean;
    /** The scopes any one of which admits a request (DESIGN.md "Auth and scopes"); absent → any valid token. */
    readonly scopes?: readonly Scope[];
    /**
     * The stores a request writes to, for tokens limited to some: `all` for a begin without
     * `stores`, undefined when the route's key has no session (the route then answers it).
     */
    readonly storesOf?: (request: FastifyRequest) => StoresNamed | Promise<StoresNamed>;
    /** A token holding this scope is not confined to its stores on this route (`operate` cancels any session). */
    readonly anyStoreWith?: Scope;
    /** A console page (`/ui`): its credential may be the console's cookie, set by `POST /ui/login`. */
    readonly console?: boolean;
  }
  interface FastifyRequest {
    /** The token the request authenticated with; absent when commitd serves without tokens. */
    accessToken?: AccessToken;
  }
}

/** True for 127.0.0.0/8, ::1 (also IPv4-mapped loopback) and `localhost`. */
export function isLoopbackHost(host: string): boolean {
  const bare = host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host;
  if (bare.toLowerCase() === 'localhost') return true;
  if (isIPv4(bare)) return bare.startsWith('127.');
  if (isIPv6(bare)) {
    const lower = bare.toLowerCase();
    if (lower === '::1' || lower === '0:0:0:0:0:0:0:1') return true;
    const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(lower);
    return mapped?.[1] !== undefined && isIPv4(mapped[1]) && mapped[1].startsWith('127.');
  }
  return false;
}

/**
 * Throws unless the app may serve: tokens are configured, or `host` is loopback. An absent host
 * means the configured default, 127.0.0.1.
 */
export function assertServable(host: string | undefined, withTokens: boolean): void {
  if (withTokens) return;
  if (host === undefined || isLoopbackHost(host)) return;
  throw new Error(
    `refusing to serve on ${JSON.stringify(host)} without a token: set COMMITD_TOKEN or auth.tokens in the config file, or serve on a loopback address (127.0.0.1, ::1, localhost)`,
  );
}

/** The bearer token of an `Authorization` header (the scheme is case-insensitive, RFC 9110). */
function bearerToken(request: FastifyRequest): string | undefined {
  const header = request.headers.authorization;
  if (header === undefined) return undefined;
  const match = /^Bearer[ ]+(\S+)[ ]*$/i.exec(header);
  return match?.[1];
}

const CHALLENGE = 'Bearer realm="commitd"';

/** The cookie the console's login sets (HttpOnly, SameSite=Strict). */
export const CONSOLE_COOKIE = 'commitd_console';
/** The header the console sends with its API calls; only then does an API route take the cookie. */
export const CONSOLE_HEADER = 'x-commitd-console';

/**
 * The console's token from its cookie: on console pages, and on API calls that carry the
 * console's header. A page on another site cannot send that header without a CORS preflight,
 * which commitd never grants, so a forged cross-site request never authenticates by cookie.
 */
function consoleToken(request: FastifyRequest): string | undefined {
  if (request.routeOptions.config.console !== true && request.headers[CONSOLE_HEADER] === undefined) return undefined;
  const header = request.headers.cookie;
  return header === undefined ? undefined : parseCookie(header)[CONSOLE_COOKIE];
}

/**
 * The one `onRequest` hook of auth: 401 unless the request carries a token of `tokens`,
 * 403 unless that token holds one of the scopes the route declares (`config.scopes`; a
 * route declaring none, `/docs` and unknown paths included, takes any valid token). Sets
 * `request.principal`. Routes with `config.public` are served to anyone.
 */
export function authenticate(tokens: TokenSet): onRequestAsyncHookHandler {
  return async (request) => {
    const config = request.routeOptions.config;
    if (config.public === true) return;
    const given = bearerToken(request) ?? consoleToken(request);
    if (given === undefined) throw new HttpProblem(401, 'unauthorized', 'this route needs Authorization: Bearer <token>', { 'www-authenticate': CHALLENGE });
    const token = tokens.find(given);
    if (token === undefined) throw new HttpProblem(401, 'unauthorized', 'the bearer token is not valid', { 'www-authenticate': CHALLENGE });
    request.principal = { name: token.name };
    request.log = request.log.child({ principal: token.name });
    const needed = config.scopes;
    if (needed === undefined || needed.some((scope) => token.scopes.has(scope))) {
      request.accessToken = token;
      return;
    }
    const list = needed.join(' ');
    throw new HttpProblem(403, 'forbidden', `token ${JSON.stringify(token.name)} lacks the scope this route needs: ${needed.join(' or ')}`, {
      'www-authenticate': `${CHALLENGE}, error="insufficient_scope", scope="${list}"`,
    });
  };
}

/**
 * Throws when a route of the API (`/v1/…`, `/metrics`) declares neither `config.scopes`
 * nor `config.public`: who may call it is decided where it is declared, never by omission.
 */
export function assertDeclaresAccess(route: RouteOptions): void {
  if (!route.url.startsWith('/v1/') && route.url !== '/metrics') return;
  if (route.config?.public === true || (route.config?.scopes?.length ?? 0) > 0) return;
  const method = Array.isArray(route.method) ? route.method.join(',') : route.method;
  throw new Error(`route ${method} ${route.url} declares no scopes: give it config.scopes (or config.public), see docs/security.md`);
}

/** Adds who may call the route to its OpenAPI description, from the same declaration the hook checks. */
export function describeAccess(route: RouteOptions): void {
  const scopes = route.config?.scopes;
  if (route.schema === undefined || scopes === undefined || scopes.length === 0) return;
  const schema = route.schema as { description?: string };
  const access = `Needs a token with the scope ${scopes.map((scope) => `\`${scope}\``).join(' or ')}.`;
  // fastify's HEAD twin of a GET route shares its schema: describe it once.
  if (schema.description?.includes(access)) return;
  schema.description = schema.description ? `${schema.description}\n\n${access}` : access;
}

/**
 * A `preHandler` hook (after validation, so the body is parsed): 403 when the request's
 * token is limited to some stores and the route's `config.storesOf` names another, or
 * names every store (a begin without `stores`: a limited token must name its stores).
 */
export const confineStores: preHandlerAsyncHookHandler = async (request) => {
  const token = request.accessToken;
  const allowed = token?.stores;
  const { storesOf, anyStoreWith } = request.routeOptions.config;
  if (allowed === undefined || storesOf === undefined) return;
  if (anyStoreWith !== undefined && token?.scopes.has(anyStoreWith)) return;
  const named = await storesOf(request);
  if (named === undefined) return;
  const name = JSON.stringify(request.accessToken?.name);
  const limit = [...allowed].join(', ');
  if (named === 'all') {
    throw new HttpProblem(403, 'forbidden', `token ${name} is limited to stores ${limit}: name them in "stores" (without it a session spans every store)`);
  }
  const outside = named.filter((store) => !allowed.has(store));
  if (outside.length > 0) throw new HttpProblem(403, 'forbidden', `token ${name} may not write to store(s) ${outside.join(', ')} (it is limited to ${limit})`);
};

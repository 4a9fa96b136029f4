/**
 * Bearer-token auth, and the rule that without a token commitd serves on loopback only
 * (DESIGN.md, Configuration: "unset → no auth on loopback only").
 * @module
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { isIPv4, isIPv6 } from 'node:net';
import type { FastifyRequest, onRequestAsyncHookHandler } from 'fastify';
import { HttpProblem } from './problems.ts';

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Served without a token even when one is configured (liveness only). */
    readonly public?: boolean;
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
 * Throws unless the app may serve: a token is set, or `host` is loopback. An absent host
 * means the configured default, 127.0.0.1.
 */
export function assertServable(host: string | undefined, token: string | undefined): void {
  if (token !== undefined) return;
  if (host === undefined || isLoopbackHost(host)) return;
  throw new Error(
    `refusing to serve on ${JSON.stringify(host)} without a token: set COMMITD_TOKEN, or serve on a loopback address (127.0.0.1, ::1, localhost)`,
  );
}

/** Compares digests so that neither the content nor the length of the token leaks through timing. */
function sameSecret(given: string, expected: Buffer): boolean {
  return timingSafeEqual(createHash('sha256').update(given).digest(), expected);
}

/** The bearer token of an `Authorization` header (the scheme is case-insensitive, RFC 9110). */
function bearerToken(request: FastifyRequest): string | undefined {
  const header = request.headers.authorization;
  if (header === undefined) return undefined;
  const match = /^Bearer[ ]+(\S+)[ ]*$/i.exec(header);
  return match?.[1];
}

/** An `onRequest` hook answering 401 unless the request carries `Authorization: Bearer <token>`. */
export function bearerAuth(token: string): onRequestAsyncHookHandler {
  const expected = createHash('sha256').update(token).digest();
  const challenge = { 'www-authenticate': 'Bearer realm="commitd"' };
  return async (request) => {
    if (request.routeOptions.config.public === true) return;
    const given = bearerToken(request);
    if (given === undefined) throw new HttpProblem(401, 'unauthorized', 'this route needs Authorization: Bearer <token>', challenge);
    if (!sameSecret(given, expected)) throw new HttpProblem(401, 'unauthorized', 'the bearer token is not valid', challenge);
  };
}

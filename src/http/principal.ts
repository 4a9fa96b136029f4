/**
 * Who made a request, as the auth hook found it: the name of the token it carried. Audit
 * records (store registration, resolve, abandon) name this.
 * @module
 */
import type { FastifyRequest } from 'fastify';

export interface Principal {
  /** The token's configured name; `token` for `COMMITD_TOKEN`; `anonymous` when auth is off. */
  readonly name: string;
}

declare module 'fastify' {
  interface FastifyRequest {
    /** Set by the auth hook; absent when commitd serves without tokens (loopback only). */
    principal?: Principal;
  }
}

/** The name an audit record gives the request's sender. */
export function principalName(request: FastifyRequest): string {
  return request.principal?.name ?? 'anonymous';
}

/**
 * Access tokens and their scopes (DESIGN.md "Auth and scopes"): the scope names, a token as
 * configured (a name, the SHA-256 of its secret, its scopes, the stores it may write), the
 * parsing of the config file's `auth.tokens` and the constant-time lookup of a bearer token.
 * @module
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { STORE_NAME_PATTERN } from '../contract/schemas.ts';

/** What a token may do; each route declares the scopes that admit it (`config.scopes`). */
export const SCOPES = ['commit', 'read', 'operate', 'admin', 'metrics'] as const;

export type Scope = (typeof SCOPES)[number];

/** The principal name of `COMMITD_TOKEN`, which holds every scope. */
export const SINGLE_TOKEN_NAME = 'token';

/** A token commitd accepts. The secret itself is never kept: only its SHA-256. */
export interface AccessToken {
  /** Names the sender in audit records and logs. */
  readonly name: string;
  /** SHA-256 of the token (32 bytes). */
  readonly sha256: Buffer;
  readonly scopes: ReadonlySet<Scope>;
  /** The only stores a begin, change or one-shot may name; undefined → every store. */
  readonly stores?: ReadonlySet<string>;
}

/** The configuration of the tokens is invalid; the message names the field. */
export class TokenConfigError extends Error {}

function digest(secret: string): Buffer {
  return createHash('sha256').update(secret, 'utf8').digest();
}

/** `COMMITD_TOKEN` (or the file's `token`): one token, every scope. */
export function singleToken(secret: string): AccessToken {
  return { name: SINGLE_TOKEN_NAME, sha256: digest(secret), scopes: new Set(SCOPES) };
}

/** One entry of `auth.tokens` as the file spells it (checked here field by field). */
export interface TokenEntry {
  readonly name: string;
  readonly sha256?: string;
  readonly tokenEnv?: string;
  readonly scopes: readonly string[];
  readonly stores?: readonly string[];
}

const TOKEN_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;
const SHA256_HEX = /^[0-9a-fA-F]{64}$/;
const STORE_NAME = new RegExp(STORE_NAME_PATTERN);

/**
 * Turns the file's `auth.tokens` into access tokens, reading `tokenEnv` variables from
 * `env`. `field` prefixes every error (`config file x.json: auth.tokens`).
 * @throws TokenConfigError — one line: an unknown scope, both or neither of `sha256` and
 *   `tokenEnv`, a `tokenEnv` that is unset, a malformed hash, a duplicate or reserved name.
 */
export function parseTokenEntries(entries: readonly TokenEntry[], env: NodeJS.ProcessEnv, field: string, reserved: readonly string[] = []): AccessToken[] {
  const names = new Set(reserved);
  return entries.map((entry, i) => {
    const at = `${field}[${i}]`;
    if (!TOKEN_NAME.test(entry.name)) {
      throw new TokenConfigError(`${at}.name: ${JSON.stringify(entry.name)} is not a token name (1–63 of A–Z a–z 0–9 . _ -, starting with a letter or digit)`);
    }
    if (names.has(entry.name)) {
      const why = reserved.includes(entry.name) ? 'is the name of COMMITD_TOKEN' : 'is used by an earlier token';
      throw new TokenConfigError(`${at}.name: ${JSON.stringify(entry.name)} ${why}; token names must be unique`);
    }
    names.add(entry.name);
    const sha256 = secretDigest(entry, env, at);
    if (entry.scopes.length === 0) throw new TokenConfigError(`${at}.scopes: must name at least one of ${SCOPES.join(', ')}`);
    const scopes = new Set<Scope>();
    entry.scopes.forEach((scope, j) => {
      const known = SCOPES.find((candidate) => candidate === scope);
      if (!known) throw new TokenConfigError(`${at}.scopes[${j}]: unknown scope ${JSON.stringify(scope)} (scopes: ${SCOPES.join(', ')})`);
      scopes.add(known);
    });
    if (entry.stores === undefined) return { name: entry.name, sha256, scopes };
    if (entry.stores.length === 0) throw new TokenConfigError(`${at}.stores: must name at least one store, or be left out for every store`);
    entry.stores.forEach((store, j) => {
      if (!STORE_NAME.test(store)) throw new TokenConfigError(`${at}.stores[${j}]: ${JSON.stringify(store)} is not a store name`);
    });
    return { name: entry.name, sha256, scopes, stores: new Set(entry.stores) };
  });
}

function secretDigest(entry: TokenEntry, env: NodeJS.ProcessEnv, at: string): Buffer {
  if (entry.sha256 !== undefined && entry.tokenEnv !== undefined) {
    throw new TokenConfigError(`${at}: give either sha256 or tokenEnv, not both`);
  }
  if (entry.sha256 !== undefined) {
    if (!SHA256_HEX.test(entry.sha256)) {
      throw new TokenConfigError(`${at}.sha256: must be the SHA-256 of the token as 64 hex digits (printf %s "$TOKEN" | sha256sum)`);
    }
    return Buffer.from(entry.sha256, 'hex');
  }
  if (entry.tokenEnv !== undefined) {
    const secret = env[entry.tokenEnv]?.trim();
    if (!secret) throw new TokenConfigError(`${at}.tokenEnv: the environment variable ${entry.tokenEnv} is unset or empty`);
    return digest(secret);
  }
  throw new TokenConfigError(`${at}: needs sha256 (the token's SHA-256 in hex) or tokenEnv (the environment variable holding the token)`);
}

/** The tokens one commitd accepts; several may be valid at once (rotation). */
export class TokenSet {
  readonly #tokens: readonly AccessToken[];

  constructor(tokens: readonly AccessToken[]) {
    const names = new Set<string>();
    for (const token of tokens) {
      if (names.has(token.name)) throw new TokenConfigError(`two tokens are named ${JSON.stringify(token.name)}`);
      names.add(token.name);
    }
    this.#tokens = tokens;
  }

  get size(): number {
    return this.#tokens.length;
  }

  /**
   * The token whose secret is `given`, or undefined. Every configured digest is compared,
   * in constant time, whatever matches: neither the secret, its length, nor which token
   * matched leaks through timing.
   */
  find(given: string): AccessToken | undefined {
    const hash = digest(given);
    let found: AccessToken | undefined;
    for (const token of this.#tokens) {
      if (timingSafeEqual(hash, token.sha256) && found === undefined) found = token;
    }
    return found;
  }
}

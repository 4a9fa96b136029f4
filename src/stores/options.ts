/**
 * Store options as given versus as used: `{"env": "NAME"}` values, resolved from this
 * instance's environment when a store opens; what looks like a credential, found so that a
 * runtime registration never writes one into the coordinator KV and redacted wherever
 * options are shown (DESIGN "Store catalog").
 * @module
 */
import { CommitdError } from '../errors/core.ts';

/** Shown in place of a credential. */
export const REDACTED = '[redacted]';

/** Option names whose string value is a credential. */
const SECRET_NAME = /(pass(word|wd|phrase)?|secret|token|api[-_]?key|access[-_]?key|private[-_]?key|credentials?|auth(orization)?|cookie)$/i;
/** A libpq key=value password (`host=h password=pw`). */
const KEYWORD_PASSWORD = /(^|\s)password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)/i;

/** An option value `{"env": "NAME"}` names a variable that is not set on this instance. */
export class MissingEnvError extends CommitdError {
  constructor(path: string, name: string) {
    super('INVALID_REQUEST', `${path}: environment variable ${name} is not set on this instance`);
  }
}

/** A runtime registration carries a credential in clear. */
export class LiteralSecretError extends CommitdError {
  constructor(path: string) {
    super(
      'INVALID_REQUEST',
      `${path}: looks like a credential given in clear; commitd never stores one: give it as {"env": "NAME"} and set NAME in each instance's environment`,
    );
  }
}

/** True for an option value `{"env": "NAME"}`. */
export function isEnvRef(value: unknown): value is { env: string } {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return false;
  const keys = Object.keys(value);
  return keys.length === 1 && keys[0] === 'env' && typeof (value as { env: unknown }).env === 'string';
}

/** `options` with every `{"env": "NAME"}` replaced by the variable's value in `env`. */
export function resolveEnvRefs(options: unknown, env: NodeJS.ProcessEnv = process.env, path = 'options'): unknown {
  if (isEnvRef(options)) {
    const value = env[options.env];
    if (value === undefined || value === '') throw new MissingEnvError(path, options.env);
    return value;
  }
  if (Array.isArray(options)) return options.map((item, i) => resolveEnvRefs(item, env, `${path}[${i}]`));
  if (typeof options === 'object' && options !== null) {
    return Object.fromEntries(Object.entries(options).map(([key, value]) => [key, resolveEnvRefs(value, env, `${path}.${key}`)]));
  }
  return options;
}

/** The path of the first credential given in clear in `options` (`{"env"}` values are fine). */
export function findLiteralSecret(options: unknown, path = 'options', name = ''): string | undefined {
  if (isEnvRef(options)) return undefined;
  if (typeof options === 'string') return isSecretString(options, name) ? path : undefined;
  if (Array.isArray(options)) {
    for (const [i, item] of options.entries()) {
      const found = findLiteralSecret(item, `${path}[${i}]`, name);
      if (found) return found;
    }
    return undefined;
  }
  if (typeof options === 'object' && options !== null) {
    for (const [key, value] of Object.entries(options)) {
      const found = findLiteralSecret(value, `${path}.${key}`, key);
      if (found) return found;
    }
  }
  return undefined;
}

/** `options` as shown: `{"env"}` values as given, credentials replaced by {@link REDACTED}. */
export function redactOptions(options: unknown, name = ''): unknown {
  if (isEnvRef(options)) return options;
  if (typeof options === 'string') return redactString(options, name);
  if (Array.isArray(options)) return options.map((item) => redactOptions(item, name));
  if (typeof options === 'object' && options !== null) {
    return Object.fromEntries(Object.entries(options).map(([key, value]) => [key, redactOptions(value, key)]));
  }
  return options;
}

function isSecretString(value: string, name: string): boolean {
  return redactString(value, name) !== value;
}

function redactString(value: string, name: string): string {
  if (value === '') return value;
  if (SECRET_NAME.test(name)) return REDACTED;
  const url = urlWithPassword(value);
  if (url) return url;
  if (KEYWORD_PASSWORD.test(value)) return value.replace(KEYWORD_PASSWORD, `$1password=${REDACTED}`);
  return value;
}

/** A URL with a password (`scheme://user:pw@host`) with the password redacted; else undefined. */
function urlWithPassword(value: string): string | undefined {
  const match = /^([a-z][a-z0-9+.-]*:\/\/)([^@/?#]*)@/i.exec(value);
  if (!match) return undefined;
  const [whole, scheme, userinfo] = match as unknown as [string, string, string];
  const colon = userinfo.indexOf(':');
  if (colon < 0 || colon === userinfo.length - 1) return undefined;
  return `${scheme}${userinfo.slice(0, colon)}:${REDACTED}@${value.slice(whole.length)}`;
}

import { accessSync, constants } from 'node:fs';
import path from 'node:path';
import type { TestContext } from 'node:test';

function isExecutable(file: string): boolean {
  try {
    accessSync(file, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * Locates a server binary: `process.env[envVar]` if set, else `name` on PATH.
 * Returns undefined when it is not available.
 */
export function requireBinary(name: string, envVar?: string): string | undefined {
  const override = envVar ? process.env[envVar] : undefined;
  if (override) return isExecutable(override) ? override : undefined;
  if (name.includes('/')) return isExecutable(name) ? name : undefined;
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    if (!dir) continue;
    const candidate = path.join(dir, name);
    if (isExecutable(candidate)) return candidate;
  }
  return undefined;
}

/**
 * The one skip-or-fail rule, as the `skip` option of a suite or test: `needs` maps what a
 * suite needs (e.g. `'etcd binary'`) to what looking it up found. False when everything was
 * found; else the reason to skip locally. Under CI=true a missing server throws instead, so
 * the suite fails: CI must not turn green by silently skipping it.
 */
export function skipUnlessFound(needs: Readonly<Record<string, unknown>>): string | false {
  const missing = Object.keys(needs).filter((name) => !needs[name]);
  if (missing.length === 0) return false;
  return skipOrFailReason(`${missing.join(' and ')} not found`);
}

/**
 * The same rule inside a running test, for what only turns out at run time (a server that
 * did not start): skips the test locally, fails it under CI=true. Callers `return` right after.
 */
export function skipOrFail(t: TestContext, reason: string): void {
  t.skip(skipOrFailReason(reason));
}

function skipOrFailReason(reason: string): string {
  if (process.env.CI === 'true') throw new Error(`required for CI: ${reason}`);
  return reason;
}

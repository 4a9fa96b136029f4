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
 * Skips the test locally but fails it on CI, where a missing server must not
 * silently turn a suite green. Callers should `return` right after.
 */
export function skipOrFail(t: TestContext, reason: string): void {
  if (process.env.CI === 'true') throw new Error(`required for CI: ${reason}`);
  t.skip(reason);
}

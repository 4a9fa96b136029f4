/**
 * Where a sqlite store's thread starts: the bundle `scripts/build-sqlite-thread.ts` made
 * (`native/build/sqlite-thread.mjs`, plain JavaScript, about a quarter of the start-up CPU),
 * or, when there is none or any source file it was built from changed since, the source
 * through tsx (`worker-entry.mjs`). A stale bundle is never run: an edited `worker.ts` takes
 * effect at once, at the slower start, until the next build.
 * @module
 */
import { readFileSync, statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export const PROJECT_ROOT = new URL('../../../', import.meta.url);
/** What the bundle is built from (`scripts/build-sqlite-thread.ts`). */
export const THREAD_SOURCE = new URL('./worker.ts', import.meta.url);
export const BUNDLE = new URL('native/build/sqlite-thread.mjs', PROJECT_ROOT);
/** The bundle's source files (paths from the project root) with their size and mtime at the build. */
export const BUNDLE_MANIFEST = new URL('native/build/sqlite-thread.json', PROJECT_ROOT);
/** The source through tsx. */
export const SOURCE_ENTRY = new URL('./worker-entry.mjs', import.meta.url);

interface Manifest {
  readonly inputs: Record<string, { readonly size: number; readonly mtimeMs: number }>;
}

/** The bundle, if `manifest` lists every file it was built from as it is now. */
export function currentBundle(manifest: URL = BUNDLE_MANIFEST, bundle: URL = BUNDLE): URL | undefined {
  try {
    const { inputs } = JSON.parse(readFileSync(manifest, 'utf8')) as Manifest;
    const files = Object.entries(inputs);
    if (files.length === 0) return undefined;
    for (const [path, built] of files) {
      const now = statSync(fileURLToPath(new URL(path, PROJECT_ROOT)));
      if (now.size !== built.size || now.mtimeMs !== built.mtimeMs) return undefined;
    }
    statSync(fileURLToPath(bundle));
    return bundle;
  } catch {
    return undefined;
  }
}

/** Where a thread starts, and the Node options it gets (the process's, when absent). */
export interface ThreadEntry {
  readonly url: URL;
  readonly execArgv?: string[];
}

/** The process's Node options without the ones that load tsx, which a bundle does not need. */
export function withoutTsx(execArgv: readonly string[]): string[] {
  const kept: string[] = [];
  for (let i = 0; i < execArgv.length; i++) {
    const arg = execArgv[i] as string;
    const next = execArgv[i + 1];
    if (/^--(import|require|loader|experimental-loader)$|^-r$/.test(arg) && next !== undefined && /\btsx\b/.test(next)) i++;
    else if (!/^--(import|require|loader|experimental-loader)=.*\btsx\b/.test(arg)) kept.push(arg);
  }
  return kept;
}

let chosen: ThreadEntry | undefined;

/** The entry of every sqlite store thread this process starts (decided once). */
export function threadEntry(): ThreadEntry {
  if (!chosen) {
    const bundle = currentBundle();
    chosen = bundle ? { url: bundle, execArgv: withoutTsx(process.execArgv) } : { url: SOURCE_ENTRY };
  }
  return chosen;
}

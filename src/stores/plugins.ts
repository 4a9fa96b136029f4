/**
 * The plugin loader: imports a module named in the config and checks that its default
 * export is a store type, so a broken plugin fails at start-up with one line that names it.
 * @module
 */
import { existsSync } from 'node:fs';
import { isAbsolute, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { CommitdError, errorMessage } from '../errors/core.ts';
import type { JsonSchema, Store, StoreContext, StoreType } from './api.ts';

/** A plugin module could not be loaded; the message is one line naming the module and why. */
export class PluginLoadError extends CommitdError {
  /** The module as the config names it. */
  readonly module: string;

  constructor(module: string, reason: string, options?: { cause?: unknown }) {
    super('PLUGIN_LOAD_FAILED', `plugin ${JSON.stringify(module)}: ${reason}`, options);
    this.module = module;
  }
}

/** The first line of an error's message: import errors (syntax) carry multi-line code frames. */
function firstLine(err: unknown): string {
  const message = errorMessage(err);
  return message.split('\n', 1)[0]?.trim() || (err instanceof Error ? err.name : 'unknown error');
}

function describeValue(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  return typeof value;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

const isPath = (specifier: string) => specifier.startsWith('.') || isAbsolute(specifier);

/** Imports the module; a relative path resolves against `baseDir`, a bare name as a package. */
async function importModule(modulePath: string, baseDir: string): Promise<unknown> {
  let url: string;
  if (isPath(modulePath)) {
    const file = resolve(baseDir, modulePath);
    if (!existsSync(file)) throw new PluginLoadError(modulePath, `module not found (looked for ${file})`);
    url = pathToFileURL(file).href;
  } else {
    try {
      url = import.meta.resolve(modulePath);
    } catch (err) {
      throw new PluginLoadError(modulePath, `module not found: ${firstLine(err)}`, { cause: err });
    }
  }
  try {
    return await import(url);
  } catch (err) {
    throw new PluginLoadError(modulePath, `import threw: ${firstLine(err)}`, { cause: err });
  }
}

/**
 * The default export checked field by field. `create` is wrapped so that what it returns is
 * checked too: a plugin is code we did not write.
 */
function asStoreType(modulePath: string, module: unknown): StoreType {
  const fail = (reason: string) => new PluginLoadError(modulePath, reason);
  const candidate = isObject(module) ? module.default : undefined;
  if (candidate === undefined) throw fail('no default export (expected a store type: {type, optionsSchema, changeSchema, create})');
  if (!isObject(candidate)) throw fail(`default export must be an object, got ${describeValue(candidate)}`);
  const { type, bookkeeping, optionsSchema, changeSchema, create } = candidate;
  if (type === undefined) throw fail('field type is missing');
  if (typeof type !== 'string' || type === '') throw fail(`field type must be a non-empty string, got ${describeValue(type)}`);
  for (const [field, schema] of [
    ['optionsSchema', optionsSchema],
    ['changeSchema', changeSchema],
  ] as const) {
    if (schema === undefined) throw fail(`field ${field} is missing`);
    if (!isObject(schema)) throw fail(`field ${field} must be a JSON Schema object, got ${describeValue(schema)}`);
  }
  if (bookkeeping !== undefined && typeof bookkeeping !== 'string') throw fail(`field bookkeeping must be a string, got ${describeValue(bookkeeping)}`);
  if (create === undefined) throw fail('field create is missing');
  if (typeof create !== 'function') throw fail(`field create must be a function, got ${describeValue(create)}`);

  return {
    type,
    ...(bookkeeping === undefined ? {} : { bookkeeping }),
    optionsSchema: optionsSchema as JsonSchema,
    changeSchema: changeSchema as JsonSchema,
    async create(options: unknown, ctx: StoreContext): Promise<Store> {
      const store: unknown = await create.call(candidate, options, ctx);
      if (!isObject(store) || typeof store.session !== 'function' || typeof store.close !== 'function') {
        throw new PluginLoadError(modulePath, 'create() must return a store with session() and close()');
      }
      return store as unknown as Store;
    },
  };
}

/**
 * Loads a store type from a plugin module. Relative paths resolve against `baseDir` (the
 * config file's directory); `.ts` modules work because commitd runs under tsx.
 * @throws PluginLoadError — module not found, import threw, no default export, a field missing or of the wrong type.
 */
export async function loadPlugin(modulePath: string, baseDir: string): Promise<StoreType> {
  return asStoreType(modulePath, await importModule(modulePath, baseDir));
}

/**
 * The store registry: store types by type name, configured stores by name, and the JSON
 * Schema validators (compiled once per type) that check options and changes at the edge.
 * @module
 */
import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';
import addFormats from 'ajv-formats';
import { CommitdError, errorMessage } from '../errors/core.ts';
import type { Store, StoreContext, StoreType } from './api.ts';

/** A change that does not match its store type's `changeSchema`, or names an unknown store. */
export class InvalidChangeError extends CommitdError {
  constructor(message: string) {
    super('INVALID_REQUEST', message);
  }
}

/** A store definition that cannot be added: unknown type, bad options, or a name in use. */
export class InvalidStoreError extends CommitdError {
  constructor(message: string) {
    super('INVALID_REQUEST', message);
  }
}

/** A store type registered twice (two plugins claiming one type name). */
export class DuplicateStoreTypeError extends CommitdError {
  constructor(type: string) {
    super('ALREADY_REGISTERED', `a store type named ${JSON.stringify(type)} is already registered`);
  }
}

/** The store type's `create` failed (file not writable, server unreachable, …). */
export class StoreOpenError extends CommitdError {
  constructor(name: string, type: string, reason: string, options?: { cause?: unknown }) {
    super('STORE_OPEN_FAILED', `store ${JSON.stringify(name)} (${type}) could not be opened: ${reason}`, options);
  }
}

/** What `add` needs to configure a store. */
export interface StoreDefinition {
  readonly name: string;
  readonly type: string;
  readonly options: unknown;
}

/**
 * What commitd gives the store being added; the registry sets `name` from the definition.
 * `logger` should already be the store's child logger (carrying `store`).
 */
export type RegistryContext = Omit<StoreContext, 'name'>;

/** A JSON pointer (`/stores/1/type`) as a readable path (`stores[1].type`). */
function fieldPath(pointer: string): string {
  return pointer
    .split('/')
    .slice(1)
    .map((segment) => segment.replace(/~1/g, '/').replace(/~0/g, '~'))
    .reduce((path, segment) => (/^\d+$/.test(segment) ? `${path}[${segment}]` : path ? `${path}.${segment}` : segment), '');
}

/**
 * One ajv error as one line: `<field>: <what is wrong>`, the field relative to `root`
 * (e.g. `options.path: must be string`). Shared with the config loader.
 */
export function describeSchemaError(error: ErrorObject, root = ''): string {
  const join = (path: string, field: string) => (path ? `${path}.${field}` : field);
  const at = fieldPath(error.instancePath);
  const base = root && at ? `${root}${at.startsWith('[') ? '' : '.'}${at}` : root || at;
  const params = error.params as Record<string, unknown>;
  switch (error.keyword) {
    case 'required':
      return `${join(base, String(params.missingProperty))}: is required`;
    case 'additionalProperties':
      return `${join(base, String(params.additionalProperty))}: is not allowed`;
    case 'type': {
      const types = Array.isArray(params.type) ? params.type : [params.type];
      return `${base || '(root)'}: must be ${types.join(' or ')}`;
    }
    case 'enum':
      return `${base || '(root)'}: must be one of ${(params.allowedValues as unknown[]).map((v) => JSON.stringify(v)).join(', ')}`;
    default:
      return `${base || '(root)'}: ${error.message ?? 'is invalid'}`;
  }
}

/**
 * A validator factory for schemas we do not own (plugins): not strict, so unknown keywords
 * do not break a plugin, and with the common string formats.
 */
export function createValidatorCompiler(): Ajv {
  const ajv = new Ajv({ allErrors: false, strict: false, logger: false });
  addFormats.default(ajv);
  return ajv;
}

interface RegisteredType {
  readonly storeType: StoreType;
  readonly validateOptions: ValidateFunction;
  readonly validateChange: ValidateFunction;
}

interface ConfiguredStore {
  readonly store: Store;
  readonly type: RegisteredType;
}

/** Store types by type name and configured stores by store name. */
export class StoreRegistry {
  readonly #ajv = createValidatorCompiler();
  readonly #types = new Map<string, RegisteredType>();
  readonly #stores = new Map<string, ConfiguredStore>();
  /** Names being created, so two concurrent `add`s of one name cannot both succeed. */
  readonly #pending = new Set<string>();

  /** Registers a store type, compiling its schemas now so a bad schema fails at start-up. */
  registerType(storeType: StoreType): void {
    if (this.#types.has(storeType.type)) throw new DuplicateStoreTypeError(storeType.type);
    const compile = (which: 'optionsSchema' | 'changeSchema') => {
      try {
        return this.#ajv.compile(storeType[which]);
      } catch (err) {
        throw new InvalidStoreError(`store type ${JSON.stringify(storeType.type)}: ${which} is not a valid JSON Schema: ${errorMessage(err)}`);
      }
    };
    this.#types.set(storeType.type, {
      storeType,
      validateOptions: compile('optionsSchema'),
      validateChange: compile('changeSchema'),
    });
  }

  /** Registered type names, sorted. */
  types(): string[] {
    return [...this.#types.keys()].sort();
  }

  /** Validates the options, creates the store and makes it available under its name. */
  async add(definition: StoreDefinition, ctx: RegistryContext): Promise<Store> {
    const { name, type, options } = definition;
    const label = `store ${JSON.stringify(name)}`;
    const registered = this.#types.get(type);
    if (!registered) {
      throw new InvalidStoreError(`${label}: unknown store type ${JSON.stringify(type)} (known: ${this.types().join(', ') || 'none'})`);
    }
    if (this.#stores.has(name) || this.#pending.has(name)) throw new InvalidStoreError(`${label}: a store with this name already exists`);
    if (!registered.validateOptions(options)) {
      const [first] = registered.validateOptions.errors ?? [];
      throw new InvalidStoreError(`${label} (${type}): ${first ? describeSchemaError(first, 'options') : 'options are invalid'}`);
    }
    this.#pending.add(name);
    try {
      let store: Store;
      try {
        store = await registered.storeType.create(options, { ...ctx, name });
      } catch (err) {
        throw new StoreOpenError(name, type, errorMessage(err), { cause: err });
      }
      this.#stores.set(name, { store, type: registered });
      return store;
    } finally {
      this.#pending.delete(name);
    }
  }

  /** Removes and closes a store; nothing happens when there is none by that name. */
  async remove(name: string): Promise<void> {
    const configured = this.#stores.get(name);
    if (!configured) return;
    this.#stores.delete(name);
    await configured.store.close();
  }

  /** The store named `name`, if configured. */
  get(name: string): Store | undefined {
    return this.#stores.get(name)?.store;
  }

  /** Configured stores, sorted by name. */
  list(): { name: string; type: string }[] {
    return [...this.#stores.entries()]
      .map(([name, { type }]) => ({ name, type: type.storeType.type }))
      .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  /** Throws `InvalidChangeError` unless `change` matches the store type's `changeSchema`. */
  validateChange(storeName: string, change: unknown): void {
    const configured = this.#stores.get(storeName);
    if (!configured) throw new InvalidChangeError(`unknown store ${JSON.stringify(storeName)}`);
    const validate = configured.type.validateChange;
    if (!validate(change)) {
      const [first] = validate.errors ?? [];
      throw new InvalidChangeError(
        `change for store ${JSON.stringify(storeName)} (${configured.type.storeType.type}): ${first ? describeSchemaError(first, 'change') : 'is invalid'}`,
      );
    }
  }

  /** Closes every store, each even if another fails; throws the first failure. */
  async closeAll(): Promise<void> {
    const stores = [...this.#stores.values()].map(({ store }) => store);
    this.#stores.clear();
    const results = await Promise.allSettled(stores.map((store) => store.close()));
    const failed = results.find((result): result is PromiseRejectedResult => result.status === 'rejected');
    if (failed) throw failed.reason;
  }
}

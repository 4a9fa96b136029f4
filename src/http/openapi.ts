/**
 * The OpenAPI document at `/docs/json`, as a generated client and a linter need it: request
 * and reply schemas as named components (`#/components/schemas/CommittedReply`), a
 * description on every operation and response, bodies optional where the server reads an
 * absent body as `{}`, `Retry-After` on every 503. Documentation only: validation and
 * serialisation keep using the route schemas as they are.
 * @module
 */
import type { FastifyDynamicSwaggerOptions } from '@fastify/swagger';
import type { RouteOptions } from 'fastify';
import * as contract from '../contract/schemas.ts';

/** Component name → the schema object the routes use. Names are what generated clients call the types. */
const NAMED_SCHEMAS: Readonly<Record<string, object>> = {
  Problem: contract.Problem,
  BeginBody: contract.BeginBody,
  ApplyBody: contract.ApplyBody,
  EmptyBody: contract.EmptyBody,
  ResolveBody: contract.ResolveBody,
  CommitOnceBody: contract.CommitOnceBody,
  AddStoreBody: contract.AddStoreBody,
  ActiveReply: contract.ActiveReply,
  CommittedReply: contract.CommittedReply,
  ApplyReply: contract.ApplyReply,
  CancelReply: contract.CancelReply,
  SessionReply: contract.SessionReply,
  SessionListReply: contract.SessionListReply,
  AbandonedReply: contract.AbandonedReply,
  ResolveReply: contract.ResolveReply,
  StoreInfoReply: contract.StoreInfoReply,
  StoreListReply: contract.StoreListReply,
  HealthReply: contract.HealthReply,
  InstanceListReply: contract.InstanceListReply,
  SessionLogReply: contract.SessionLogReply,
  MetricsJsonReply: contract.MetricsJsonReply,
  ReadyReply: contract.ReadyReply,
};

/** What each operation does, for readers of the document, and what its success answers mean. */
export const OPERATION_DOCS: Readonly<Record<string, { readonly description: string; readonly responses: Readonly<Record<string, string>> }>> = {
  health: {
    description: 'Answers while the process serves requests; says nothing about the KV or the stores. Needs no token.',
    responses: { 200: 'The process serves' },
  },
  ready: {
    description:
      'Answers 200 when the coordinator KV answers within its deadline, with each store up or down (a down store does not make the instance unready); 503 with Retry-After when the KV does not answer. The answer comes within 1 s. Needs no token.',
    responses: { 200: 'The coordinator KV answers' },
  },
  metrics: {
    description: 'Prometheus text exposition: session counters and gauges, commit and KV latency, HTTP request durations by route and status.',
    responses: { 200: 'Metrics in the Prometheus text format' },
  },
  beginSession: {
    description:
      'Opens a session under the idempotency key (body `key` or the Idempotency-Key header). A key already committed answers its stored result (200) without opening anything; a crashed session under the key is resumed (200, recovery: true).',
    responses: { 201: 'Session begun', 200: 'A crashed session resumed (recovery: true), or the key is already committed' },
  },
  applyChanges: {
    description:
      'Applies changes to one store of an open session, in order, each checked against its store type. A change the store rejects answers 409 store_conflict naming its index; earlier changes stay.',
    responses: { 200: 'The changes were applied' },
  },
  commitSession: {
    description:
      'Prepares every store, writes the commit point, commits the stores in name order and answers the session ID. The body may be absent. Every retry gets the same answer while the result is retained; a retry while the first commit is still running waits for it.',
    responses: { 200: 'Committed: the session ID and each store’s ID' },
  },
  cancelSession: {
    description:
      'Cancels an open session: every store is rolled back and the key is free again. The body may be absent. A committing or committed session cannot be cancelled (409).',
    responses: { 200: 'Cancelled' },
  },
  getSession: {
    description: 'The state of the session under a key: active or committing (open), failed (awaiting an operator), committed (within retention).',
    responses: { 200: 'The session' },
  },
  listSessions: {
    description: 'Sessions by state, for operators.',
    responses: { 200: 'The sessions' },
  },
  resolveSession: {
    description:
      'An operator’s decision on a failed session: `retry` rolls it forward again, `abandon` gives it up (its log is dropped, nothing more is applied).',
    responses: { 200: 'The session after the retry, or the abandoned key' },
  },
  commitOnce: {
    description:
      'Begins, applies and commits in one request; the session spans exactly the stores named in `changes`. Retried as a whole under the same key, it answers the same result.',
    responses: { 200: 'Committed: the session ID and each store’s ID' },
  },
  listStores: {
    description: 'The stores this instance knows, with their types.',
    responses: { 200: 'The stores' },
  },
  addStore: {
    description:
      'Registers a store of a type already loaded (built in or a plugin); its options are checked against the type’s schema and the store must be reachable.',
    responses: { 201: 'Store registered' },
  },
  listInstances: {
    description: 'The commitd instances whose lease in the coordinator KV is alive, sorted by id; `self` marks the one that answered.',
    responses: { 200: 'The instances' },
  },
  getSessionLog: {
    description:
      'The change log the KV holds for a one-shot in flight, a committing or a failed session, credential-like members masked as ***. 404 when none is kept (committed, open on its instance, or unknown).',
    responses: { 200: 'The change log, by store' },
  },
  removeStore: {
    description: 'Removes a store; refused (409) while an open, committing or failed session uses it.',
    responses: { 204: 'Store removed' },
  },
};

const RETRY_AFTER_HEADER = {
  description: 'Seconds to wait before retrying',
  schema: { type: 'integer', minimum: 1 },
} as const;

const isObject = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null;

/** Members a response entry may add to a named schema: they describe the answer, not its body. */
const ANSWER_MEMBERS = new Set(['description', 'headers']);

/** The component a schema is, by identity or as a copy that only adds a description or headers (`{...ActiveReply, description}`). */
function componentOf(schema: object): string | undefined {
  for (const [name, named] of Object.entries(NAMED_SCHEMAS)) {
    if (schema === named) return name;
  }
  const keys = Object.keys(schema).filter((key) => !ANSWER_MEMBERS.has(key));
  for (const [name, named] of Object.entries(NAMED_SCHEMAS)) {
    const namedKeys = Object.keys(named).filter((key) => !ANSWER_MEMBERS.has(key));
    if (keys.length === namedKeys.length && keys.every((key) => (schema as Record<string, unknown>)[key] === (named as Record<string, unknown>)[key]))
      return name;
  }
  return undefined;
}

/** A copy of `schema` whose named parts are `$ref`s to their components (`root` itself stays inline). */
function withRefs(schema: unknown, root = true): unknown {
  if (Array.isArray(schema)) return schema.map((item) => withRefs(item, false));
  if (!isObject(schema)) return schema;
  const name = root ? undefined : componentOf(schema);
  if (name !== undefined) return { $ref: `${name}#` };
  return Object.fromEntries(Object.entries(schema).map(([key, value]) => [key, withRefs(value, false)]));
}

/** A body or response entry: a `$ref` to its component when it is one, keeping the entry's own description and headers. */
function entry(schema: unknown): unknown {
  if (!isObject(schema)) return schema;
  const name = componentOf(schema);
  if (name !== undefined) {
    return {
      $ref: `${name}#`,
      ...(typeof schema.description === 'string' ? { description: schema.description } : {}),
      ...(isObject(schema.headers) ? { headers: schema.headers } : {}),
    };
  }
  if (isObject(schema.content)) {
    // `{description, content: {type: {schema}}}`, as problemResponses and /metrics write them.
    const content = Object.fromEntries(
      Object.entries(schema.content).map(([type, media]) => [type, isObject(media) ? { ...media, schema: entry(media.schema) } : media]),
    );
    return { ...schema, content };
  }
  return withRefs(schema);
}

/** Request bodies the server reads as `{}` when absent (a `preValidation` hook named absentBodyIsEmpty). */
const bodyOptional = new Set<string>();

function transform({ schema, url, route }: { schema: Record<string, unknown> | undefined; url: string; route: RouteOptions }) {
  if (schema === undefined) return { schema: {}, url };
  const operationId = typeof schema.operationId === 'string' ? schema.operationId : undefined;
  const docs = operationId === undefined ? undefined : OPERATION_DOCS[operationId];
  const hooks = [route.preValidation].flat();
  if (operationId !== undefined && hooks.some((hook) => typeof hook === 'function' && hook.name === 'absentBodyIsEmpty')) bodyOptional.add(operationId);
  const response = isObject(schema.response)
    ? Object.fromEntries(
        Object.entries(schema.response).map(([status, answer]) => {
          const described = docs?.responses[status];
          const documented = entry(answer);
          return [status, described !== undefined && isObject(documented) ? { ...documented, description: described } : documented];
        }),
      )
    : undefined;
  return {
    url,
    schema: {
      ...schema,
      // The operation's own text first, then who may call it (added from the route's scopes).
      ...(docs ? { description: typeof schema.description === 'string' ? `${docs.description}\n\n${schema.description}` : docs.description } : {}),
      ...(schema.body === undefined ? {} : { body: entry(schema.body) }),
      ...(response === undefined ? {} : { response }),
    },
  };
}

type Document = Record<string, unknown> & { paths?: Record<string, Record<string, Record<string, unknown>>> };

/** What the generated document still needs once every route is in: optional bodies, Retry-After, servers. */
function transformObject({ openapiObject }: { openapiObject: unknown }): Document {
  const document = openapiObject as Document;
  for (const operations of Object.values(document.paths ?? {})) {
    for (const operation of Object.values(operations)) {
      const body = operation.requestBody;
      if (isObject(body) && typeof operation.operationId === 'string' && bodyOptional.has(operation.operationId)) body.required = false;
      const responses = isObject(operation.responses) ? operation.responses : {};
      const unavailable = responses['503'];
      if (isObject(unavailable)) unavailable.headers = { ...(isObject(unavailable.headers) ? unavailable.headers : {}), 'Retry-After': RETRY_AFTER_HEADER };
    }
  }
  return document;
}

/** Registers the named schemas as shared schemas, so `$ref: "Name#"` resolves, and returns @fastify/swagger's options. */
export function openapiOptions(addSchema: (schema: object) => void): Pick<FastifyDynamicSwaggerOptions, 'transform' | 'transformObject' | 'refResolver'> {
  for (const [name, schema] of Object.entries(NAMED_SCHEMAS)) addSchema({ ...(withRefs(schema) as object), $id: name, title: name });
  return {
    transform: transform as never,
    transformObject: transformObject as never,
    // Components are named by their `$id`, not `def-0`, `def-1`, …
    refResolver: { buildLocalReference: (json, _baseUri, _fragment, i) => (typeof json.$id === 'string' ? json.$id : `def-${i}`) },
  };
}

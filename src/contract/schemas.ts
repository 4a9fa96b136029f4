/**
 * TypeBox schemas of HTTP API v1: every body, parameter, header and reply. Routes declare
 * them; fastify validates and serialises with them and the OpenAPI document is built from
 * them, so this file is the API's single source of truth.
 * @module
 */
import { Type, type Static, type TUnsafe } from '@sinclair/typebox';
import { PROBLEM_CODES } from '../errors/catalogue.ts';

/** Read-only all the way down: the coordinator hands out read-only views, and replies may be those. */
export type DeepReadonly<T> = T extends (infer E)[] ? readonly DeepReadonly<E>[] : T extends object ? { readonly [K in keyof T]: DeepReadonly<T[K]> } : T;

/**
 * A string that is one of `values`, as a JSON Schema `enum`: Ajv then says "must be equal
 * to one of the allowed values" once, where a union of literals repeats itself per branch.
 */
export function StringEnum<const T extends readonly string[]>(values: T, options: { description?: string } = {}): TUnsafe<T[number]> {
  return Type.Unsafe<T[number]>({ type: 'string', enum: [...values], ...options });
}

// ---------------------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------------------

/** An idempotency key over HTTP: 1–200 characters of `A–Z a–z 0–9 . _ ~ : -` (DESIGN.md). */
export const KEY_PATTERN = '^[A-Za-z0-9._~:-]{1,200}$';
/** A store name: a letter, then up to 62 letters, digits, `_` or `-` (safe in paths, metrics, logs). */
export const STORE_NAME_PATTERN = '^[A-Za-z][A-Za-z0-9_-]{0,62}$';
/** A store type name (built in or from a plugin); same alphabet as store names. */
export const STORE_TYPE_PATTERN = STORE_NAME_PATTERN;
/** Most changes one request may carry for one store. */
export const MAX_CHANGES_PER_STORE = 10_000;
/** Most stores one request may name. */
export const MAX_STORES_PER_REQUEST = 64;

export const IdempotencyKey = Type.String({
  pattern: KEY_PATTERN,
  description: 'Idempotency key chosen by the caller: 1–200 characters of A–Z a–z 0–9 . _ ~ : -',
  examples: ['order-2024-0001'],
});

export const StoreName = Type.String({ pattern: STORE_NAME_PATTERN, description: 'Name of a configured store', examples: ['main'] });

export const StoreTypeName = Type.String({ pattern: STORE_TYPE_PATTERN, description: 'Store type, e.g. sqlite, postgres, redis, etcd', examples: ['sqlite'] });

/**
 * The `Idempotency-Key` header: a bare key, or the key as a structured-field string in
 * double quotes (draft-ietf-httpapi-idempotency-key-header); keys never contain quotes.
 */
export const KeyHeaders = Type.Object({
  'idempotency-key': Type.Optional(
    Type.String({
      pattern: '^(?:[A-Za-z0-9._~:-]{1,200}|"[A-Za-z0-9._~:-]{1,200}")$',
      description: 'The idempotency key, when it is not in the body or path',
    }),
  ),
});

// ---------------------------------------------------------------------------------------
// Request parts
// ---------------------------------------------------------------------------------------

/** One change, in the format of its store's type; the coordinator validates it against that type. */
export const Change = Type.Object({}, { additionalProperties: true, description: 'One change, in its store type’s format (sqlite: {sql, params?})' });

export const Changes = Type.Array(Change, { maxItems: MAX_CHANGES_PER_STORE, description: 'Changes for one store, applied in order' });

/** One-shot changes: store name → that store's changes. */
export const ChangesByStore = Type.Record(StoreName, Changes, {
  // Names outside the store-name pattern are refused, not ignored.
  additionalProperties: false,
  minProperties: 1,
  maxProperties: MAX_STORES_PER_REQUEST,
  description: 'Changes by store name; the session spans exactly these stores',
});

export const SessionParams = Type.Object({ key: IdempotencyKey });

export const StoreParams = Type.Object({ name: StoreName });

export const BeginBody = Type.Object(
  {
    key: Type.Optional(IdempotencyKey),
    stores: Type.Optional(
      Type.Array(StoreName, {
        minItems: 1,
        maxItems: MAX_STORES_PER_REQUEST,
        uniqueItems: true,
        description: 'Stores taking part; all configured stores when absent',
      }),
    ),
  },
  { additionalProperties: false },
);

export const ApplyBody = Type.Object({ store: StoreName, changes: Changes }, { additionalProperties: false });

/** Commit and cancel take no fields; an absent body counts as `{}`. */
export const EmptyBody = Type.Object({}, { additionalProperties: false });

export const ResolveBody = Type.Object(
  {
    action: StringEnum(['retry', 'abandon'], { description: 'retry: roll the failed session forward again; abandon: drop it with its log' }),
  },
  { additionalProperties: false },
);

export const CommitOnceBody = Type.Object({ key: Type.Optional(IdempotencyKey), changes: ChangesByStore }, { additionalProperties: false });

/** States a listing can ask for: committed ones from their results, abandoned ones from their audit records. */
export const LISTABLE_STATES = ['active', 'committing', 'failed', 'committed', 'abandoned'] as const;

/** The most sessions one page of a listing holds (and the default). */
export const MAX_PAGE_LIMIT = 1000;
export const DEFAULT_PAGE_LIMIT = 100;

export const ListSessionsQuery = Type.Object({
  state: Type.Optional(StringEnum(LISTABLE_STATES, { description: 'Only sessions in this state; absent: every open or failed session' })),
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: MAX_PAGE_LIMIT, description: `Sessions per page (default ${DEFAULT_PAGE_LIMIT})` })),
  cursor: Type.Optional(
    Type.String({ minLength: 1, maxLength: 2048, pattern: '^[A-Za-z0-9_-]+$', description: 'The nextCursor of the previous page, as it came' }),
  ),
});

export const AddStoreBody = Type.Object(
  {
    name: StoreName,
    type: StoreTypeName,
    options: Type.Optional(Type.Unknown({ description: 'Options of the store type, checked against its schema; {} when absent' })),
  },
  { additionalProperties: false },
);

// ---------------------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------------------

const StoreIds = Type.Record(Type.String(), Type.String(), { description: 'Each store’s ID (hex), by store name' });

const SessionIdHex = Type.String({ description: 'Session ID: lower-case hex, derived from the applied changes' });

export const ActiveReply = Type.Object({
  key: Type.String(),
  state: Type.Literal('active'),
  recovery: Type.Boolean({ description: 'True when a crashed session under this key was resumed' }),
  stores: Type.Array(Type.String(), { description: 'Stores taking part' }),
});

export const CommittedReply = Type.Object({
  key: Type.String(),
  state: Type.Literal('committed'),
  sessionId: SessionIdHex,
  stores: StoreIds,
  committedAt: Type.Optional(Type.String({ description: 'ISO 8601' })),
});

export const ApplyReply = Type.Object({
  key: Type.String(),
  store: Type.String(),
  applied: Type.Integer({ description: 'Changes applied by this request' }),
});

export const CancelReply = Type.Object({ key: Type.String(), state: Type.Literal('cancelled') });

/** An operator's action on a session, kept for the retention period. */
export const SessionAuditEntry = Type.Object({
  action: StringEnum(['retry', 'abandon']),
  by: Type.String({ description: 'Name of the token that sent it (COMMITD_TOKEN: "token"; without auth: "anonymous")' }),
  at: Type.String({ description: 'ISO 8601' }),
});

export const SessionReply = Type.Object({
  key: Type.String(),
  state: StringEnum(['active', 'committing', 'committed', 'failed', 'abandoned'], { description: 'abandoned: only in a listing by that state' }),
  stores: Type.Union([Type.Array(Type.String()), StoreIds], { description: 'Store names (open sessions) or store IDs by name (committed)' }),
  sessionId: Type.Optional(SessionIdHex),
  owner: Type.Optional(Type.String({ description: 'Instance driving the session' })),
  startedAt: Type.Optional(Type.String()),
  committedAt: Type.Optional(Type.String()),
  error: Type.Optional(Type.String({ description: 'Why a failed session failed' })),
  audit: Type.Optional(Type.Array(SessionAuditEntry, { description: 'Operators’ retries and abandons of this key within the retention period, oldest first' })),
  abandonedBy: Type.Optional(Type.String({ description: 'Who abandoned it (an abandoned session in a listing)' })),
  abandonedAt: Type.Optional(Type.String({ description: 'When it was abandoned, ISO 8601' })),
});

export const SessionListReply = Type.Object({
  sessions: Type.Array(SessionReply, { description: 'Newest first: by the last write of each record' }),
  nextCursor: Type.Optional(Type.String({ description: 'Present when more sessions follow: pass it as cursor' })),
});

/** Header of a reply that serves a stored result again (draft-ietf-httpapi-idempotency-key-header users look for it). */
export const REPLAYED_HEADER = 'idempotent-replayed';

/** A reply schema that may come with `Idempotent-Replayed: true` (documented in OpenAPI as a response header). */
export function replayable<S extends object>(schema: S): S & { headers: Record<string, unknown> } {
  return {
    ...schema,
    headers: {
      'Idempotent-Replayed': {
        type: 'string',
        enum: ['true'],
        description: 'Present (true) when the answer is a stored result served again; absent on the first answer',
      },
    },
  };
}

export const AbandonedReply = Type.Object({ key: Type.String(), state: Type.Literal('abandoned') });

export const ResolveReply = Type.Union([SessionReply, AbandonedReply]);

export const StoreInfoReply = Type.Object({
  name: Type.String(),
  type: Type.String(),
  origin: Type.Optional(StringEnum(['config', 'runtime'], { description: 'config: from the config file; runtime: registered with POST /v1/stores' })),
  options: Type.Optional(Type.Unknown({ description: 'As given: {"env": NAME} values shown as such, credentials redacted' })),
  registeredBy: Type.Optional(Type.String({ description: 'Who registered it (token name)' })),
  registeredAt: Type.Optional(Type.String({ description: 'ISO 8601' })),
  status: Type.Optional(StringEnum(['open', 'down'], { description: 'down: not open on this instance (yet); error says why' })),
  error: Type.Optional(Type.String()),
});

export const StoreRemovalReply = Type.Object({
  name: Type.String(),
  type: Type.String(),
  by: Type.String({ description: 'Who removed it (token name)' }),
  at: Type.String({ description: 'ISO 8601' }),
});

export const StoreListReply = Type.Object({
  stores: Type.Array(StoreInfoReply),
  removed: Type.Optional(Type.Array(StoreRemovalReply, { description: 'Stores removed within the retention period, newest first' })),
});

export const HealthReply = Type.Object({ status: Type.Literal('ok') });

export const InstanceReply = Type.Object({
  id: Type.String({ description: 'Instance id (config, or the file in its data dir)' }),
  pid: Type.Integer(),
  startedAt: Type.String({ description: 'ISO 8601' }),
  self: Type.Boolean({ description: 'True for the instance that answered' }),
});

export const InstanceListReply = Type.Object({ instances: Type.Array(InstanceReply) });

export const MetricsJsonReply = Type.Array(Type.Unknown(), { description: 'prom-client’s JSON form of the registry: one entry per metric' });

export const SessionLogReply = Type.Object({
  key: Type.String(),
  log: Type.Record(Type.String(), Type.Array(Type.Unknown()), { description: 'Changes by store, in order; credential-like members masked as ***' }),
});

export const ReadyReply = Type.Object({
  status: Type.Literal('ok'),
  stores: Type.Optional(
    Type.Array(Type.Object({ name: Type.String(), status: StringEnum(['up', 'down']), error: Type.Optional(Type.String()) }), {
      description: 'Each store up or down; a down store does not make the instance unready',
    }),
  ),
});

// ---------------------------------------------------------------------------------------
// Problems (RFC 9457)
// ---------------------------------------------------------------------------------------

/** The stable problem codes of the contract, plus `internal` for a bug. */
export const ProblemCodeSchema = StringEnum(PROBLEM_CODES);

export type ProblemCode = Static<typeof ProblemCodeSchema>;

/** An RFC 9457 problem; extension members (e.g. `store` on a store conflict) are allowed. */
export const Problem = Type.Object(
  {
    type: Type.String({ description: 'URI naming the problem type' }),
    title: Type.String(),
    status: Type.Integer(),
    detail: Type.String(),
    code: ProblemCodeSchema,
  },
  { additionalProperties: true },
);

/** A problem with its extension members (TypeBox's `Static` leaves out `additionalProperties`). */
export type Problem = Static<typeof Problem> & { readonly [member: string]: unknown };

export const PROBLEM_CONTENT_TYPE = 'application/problem+json';

const problemDescriptions: Readonly<Record<number, string>> = {
  400: 'invalid_request: malformed JSON, a body, key or header outside its schema, an unknown store',
  401: 'unauthorized: missing or wrong bearer token',
  403: 'forbidden: the token lacks the scope this route needs, or may not write to a store the request names',
  404: 'not_found: no such session or store',
  405: 'method_not_allowed: the path exists, not with this method (see the Allow header)',
  409: 'session_busy (the key is held by a live session) or store_conflict (a store rejected a change)',
  413: 'payload_too_large: the body is over the limit (the detail states it in bytes)',
  415: 'unsupported_media_type: send the body as application/json',
  422: 'key_reused: the key was used with other stores or changes',
  503: 'unavailable: retry after Retry-After seconds',
};

/** Response entries documenting the problems a route can answer, as `application/problem+json`. */
export function problemResponses<const S extends number>(
  ...statuses: S[]
): Record<S, { description: string; content: { 'application/problem+json': { schema: typeof Problem } } }> {
  const responses = {} as Record<S, { description: string; content: { 'application/problem+json': { schema: typeof Problem } } }>;
  for (const status of statuses) {
    responses[status] = { description: problemDescriptions[status] ?? 'problem', content: { [PROBLEM_CONTENT_TYPE]: { schema: Problem } } };
  }
  return responses;
}

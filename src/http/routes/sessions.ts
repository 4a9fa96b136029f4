/**
 * Session routes of HTTP API v1: begin, apply, commit, cancel, inspect, list, resolve, and
 * the one-shot commit. Each maps onto one coordinator call.
 * @module
 */
import { Type } from '@sinclair/typebox';
import type { FastifyPluginAsync, FastifyReply, FastifyRequest, RawServerDefault } from 'fastify';
import { NOTHING_TO_COMMIT, SessionNotFoundError } from '../../coordinator/errors.ts';
import type { CommittedView, SessionCoordinator } from '../../coordinator/types.ts';
import { principalName } from '../principal.ts';
import { HttpProblem } from '../problems.ts';
import {
  ActiveReply,
  ApplyBody,
  ApplyReply,
  BeginBody,
  CancelReply,
  CommitOnceBody,
  CommittedReply,
  EmptyBody,
  KeyHeaders,
  ListSessionsQuery,
  REPLAYED_HEADER,
  ResolveBody,
  ResolveReply,
  SessionListReply,
  SessionParams,
  SessionReply,
  problemResponses,
  replayable,
} from '../../contract/schemas.ts';
import type { TypeBoxProvider } from '../type-provider.ts';

export interface SessionRoutesOptions {
  readonly coordinator: SessionCoordinator;
}

const tags = ['sessions'];

/** A POST without a body (and so without a content type) means `{}`: `curl -X POST …/commit` works. */
async function absentBodyIsEmpty(request: FastifyRequest): Promise<void> {
  request.body ??= {};
}

/** The header value without the optional structured-field quotes. */
function headerKey(header: string | undefined): string | undefined {
  return header?.startsWith('"') ? header.slice(1, -1) : header;
}

/** The key of a body-keyed route: from the body or the header; both given must agree. */
function requestKey(bodyKey: string | undefined, header: string | undefined): string {
  const fromHeader = headerKey(header);
  if (bodyKey !== undefined && fromHeader !== undefined && bodyKey !== fromHeader) {
    throw new HttpProblem(
      400,
      'invalid_request',
      `the body key ${JSON.stringify(bodyKey)} differs from the Idempotency-Key header ${JSON.stringify(fromHeader)}`,
    );
  }
  const key = bodyKey ?? fromHeader;
  if (key === undefined) throw new HttpProblem(400, 'invalid_request', 'an idempotency key is required: body "key" or the Idempotency-Key header');
  return key;
}

/** On a path-keyed route a header is optional, but must name the same key. */
function pathKey(key: string, header: string | undefined): string {
  const fromHeader = headerKey(header);
  if (fromHeader !== undefined && fromHeader !== key) {
    throw new HttpProblem(400, 'invalid_request', `the path key ${JSON.stringify(key)} differs from the Idempotency-Key header ${JSON.stringify(fromHeader)}`);
  }
  return key;
}

/**
 * The query's `limit` as a number: query strings are text and commitd's Ajv does not
 * coerce types, so the schema can say `integer` (and OpenAPI clients send one).
 */
async function numericLimit(request: FastifyRequest): Promise<void> {
  const query = request.query as { limit?: unknown };
  if (typeof query.limit === 'string' && /^\d{1,9}$/.test(query.limit)) query.limit = Number(query.limit);
}

/**
 * The stores of the session under the path's key, for a token limited to some stores:
 * committing or cancelling a session on another store is as refused as writing to one.
 */
async function storesOfSession(coordinator: SessionCoordinator, request: FastifyRequest): Promise<readonly string[] | undefined> {
  const view = await coordinator.get((request.params as { key: string }).key);
  if (view === undefined) return undefined;
  return Array.isArray(view.stores) ? view.stores : Object.keys(view.stores);
}

/** Sends a committed answer; a result served again says so in `Idempotent-Replayed`. */
function sendCommitted(reply: FastifyReply, view: CommittedView, status = 200): FastifyReply {
  const { replayed, ...body } = view;
  if (replayed) reply.header(REPLAYED_HEADER, 'true');
  return reply.code(status).send(body);
}

/**
 * A one-shot that changes nothing (`changes` without members, or only empty lists) is
 * refused saying so, before the schema's "fewer than 1 properties" and the key check.
 */
async function refuseNothingToCommit(request: FastifyRequest): Promise<void> {
  const body: unknown = request.body;
  if (typeof body !== 'object' || body === null || !('changes' in body)) return;
  const changes: unknown = body.changes;
  if (typeof changes !== 'object' || changes === null || Array.isArray(changes)) return;
  if (Object.values(changes).every((list) => Array.isArray(list) && list.length === 0)) throw new HttpProblem(400, 'invalid_request', NOTHING_TO_COMMIT);
}

export const sessionRoutes: FastifyPluginAsync<SessionRoutesOptions, RawServerDefault, TypeBoxProvider> = async (app, { coordinator }) => {
  app.post(
    '/v1/sessions',
    {
      config: { scopes: ['commit'], storesOf: (request) => (request.body as { stores?: string[] }).stores ?? 'all' },
      preValidation: absentBodyIsEmpty,
      schema: {
        tags,
        operationId: 'beginSession',
        summary: 'Begin a session (all stores when `stores` is absent; the body may be omitted when the key is in the header)',
        headers: KeyHeaders,
        body: BeginBody,
        response: {
          201: { ...ActiveReply, description: 'Session begun' },
          200: replayable(
            Type.Union([ActiveReply, CommittedReply], { description: 'A crashed session resumed (recovery: true), or the key is already committed' }),
          ),
          ...problemResponses(400, 401, 403, 409, 413, 422, 503),
        },
      },
    },
    async (request, reply) => {
      const key = requestKey(request.body.key, request.headers['idempotency-key']);
      const view = await coordinator.begin(key, request.body.stores);
      if (view.state === 'committed') return sendCommitted(reply, view);
      return reply.code(view.recovery ? 200 : 201).send(view);
    },
  );

  app.post(
    '/v1/sessions/:key/changes',
    {
      config: { scopes: ['commit'], storesOf: (request) => [(request.body as { store: string }).store] },
      schema: {
        tags,
        operationId: 'applyChanges',
        summary: 'Apply changes to one store of an open session, in order',
        headers: KeyHeaders,
        params: SessionParams,
        body: ApplyBody,
        response: { 200: ApplyReply, ...problemResponses(400, 401, 403, 404, 409, 413, 503) },
      },
    },
    async (request) => {
      const key = pathKey(request.params.key, request.headers['idempotency-key']);
      return coordinator.apply(key, request.body.store, request.body.changes);
    },
  );

  app.post(
    '/v1/sessions/:key/commit',
    {
      config: { scopes: ['commit'], storesOf: (request) => storesOfSession(coordinator, request) },
      preValidation: absentBodyIsEmpty,
      schema: {
        tags,
        operationId: 'commitSession',
        summary: 'Commit (no body, or {}); every retry gets the same answer while the result is retained',
        headers: KeyHeaders,
        params: SessionParams,
        body: EmptyBody,
        response: { 200: replayable(CommittedReply), ...problemResponses(400, 401, 403, 404, 409, 413, 422, 503) },
      },
    },
    async (request, reply) => sendCommitted(reply, await coordinator.commit(pathKey(request.params.key, request.headers['idempotency-key']))),
  );

  app.post(
    '/v1/sessions/:key/cancel',
    {
      config: { scopes: ['commit', 'operate'], storesOf: (request) => storesOfSession(coordinator, request), anyStoreWith: 'operate' },
      preValidation: absentBodyIsEmpty,
      schema: {
        tags,
        operationId: 'cancelSession',
        summary: 'Cancel an open session (no body, or {})',
        headers: KeyHeaders,
        params: SessionParams,
        body: EmptyBody,
        response: { 200: CancelReply, ...problemResponses(400, 401, 403, 404, 409, 503) },
      },
    },
    async (request) => coordinator.cancel(pathKey(request.params.key, request.headers['idempotency-key'])),
  );

  app.get(
    '/v1/sessions/:key',
    {
      config: { scopes: ['commit', 'read'] },
      schema: {
        tags,
        operationId: 'getSession',
        summary: 'A session’s state: active, committing, committed or failed',
        params: SessionParams,
        response: { 200: SessionReply, ...problemResponses(400, 401, 403, 404, 503) },
      },
    },
    async (request) => {
      const view = await coordinator.get(request.params.key);
      if (view === undefined) throw new SessionNotFoundError(request.params.key);
      return view;
    },
  );

  app.get(
    '/v1/sessions',
    {
      config: { scopes: ['read'] },
      preValidation: numericLimit,
      schema: {
        tags,
        operationId: 'listSessions',
        summary: 'Sessions of one state, newest first, a page at a time (no state: every open or failed session)',
        querystring: ListSessionsQuery,
        response: { 200: SessionListReply, ...problemResponses(400, 401, 403, 503) },
      },
    },
    async (request) => coordinator.list(request.query),
  );

  app.post(
    '/v1/sessions/:key/resolve',
    {
      config: { scopes: ['operate'] },
      schema: {
        tags,
        operationId: 'resolveSession',
        summary: 'Operator action on a failed session: retry or abandon',
        headers: KeyHeaders,
        params: SessionParams,
        body: ResolveBody,
        response: { 200: ResolveReply, ...problemResponses(400, 401, 403, 404, 409, 503) },
      },
    },
    async (request) => coordinator.resolve(pathKey(request.params.key, request.headers['idempotency-key']), request.body.action, principalName(request)),
  );

  app.post(
    '/v1/commits',
    {
      config: { scopes: ['commit'], storesOf: (request) => Object.keys((request.body as { changes: Record<string, unknown> }).changes) },
      preValidation: refuseNothingToCommit,
      schema: {
        tags,
        operationId: 'commitOnce',
        summary: 'Begin, apply and commit in one request',
        headers: KeyHeaders,
        body: CommitOnceBody,
        response: { 200: replayable(CommittedReply), ...problemResponses(400, 401, 403, 409, 413, 422, 503) },
      },
    },
    async (request, reply) => {
      const key = requestKey(request.body.key, request.headers['idempotency-key']);
      return sendCommitted(reply, await coordinator.commitOnce(key, request.body.changes));
    },
  );
};

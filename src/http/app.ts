/**
 * Builds the fastify app of HTTP API v1 around a coordinator handed in by the caller:
 * validation and serialisation from the schemas, problem+json errors, bearer auth,
 * OpenAPI at `/docs`. It does not listen; `src/main.ts` does.
 * @module
 */
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import type { SessionCoordinator } from '../coordinator/types.ts';
import type { Metrics } from '../metrics.ts';
import { assertDeclaresAccess, assertServable, describeAccess, authenticate, confineStores } from './auth.ts';
import { TokenSet, singleToken, type AccessToken } from './tokens.ts';
import { AllowedMethods } from './allowed-methods.ts';
import { JsonBodyError, parseJsonBody } from './json-body.ts';
import { HttpProblem, MAX_PARAM_LENGTH, handleClientError, handleError, notFoundHandler } from './problems.ts';
import { inspectRoutes } from './routes/inspect.ts';
import { openapiOptions } from './openapi.ts';
import { opsRoutes } from './routes/ops.ts';
import { sessionRoutes } from './routes/sessions.ts';
import { storeRoutes } from './routes/stores.ts';
import { uiRoutes } from './routes/ui.ts';

/** Request bodies above this many bytes are answered 413 unless `bodyLimit` says otherwise. */
export const DEFAULT_BODY_LIMIT = 1024 * 1024;

export interface AppOptions {
  readonly coordinator: SessionCoordinator;
  readonly metrics: Metrics;
  readonly logger: Logger;
  /** `COMMITD_TOKEN`: a bearer token with every scope, named `token`; unset (or empty) → none. */
  readonly token?: string;
  /** Tokens of the config file's `auth.tokens`, valid beside `token`. No token at all → no auth, loopback only. */
  readonly tokens?: readonly AccessToken[];
  /** Largest request body in bytes (default 1 MiB). */
  readonly bodyLimit?: number;
  /** The address `main` will listen on; without a token it must be loopback. Default 127.0.0.1. */
  readonly host?: string;
}

/** Per-request lines at debug: at info they drown what matters. Errors keep their level. */
class QuietLogController extends LogController {
  override incomingRequest(request: FastifyRequest): void {
    request.log.debug({ req: request }, 'incoming request');
  }

  override requestCompleted(error: Error | null | undefined, _request: FastifyRequest, reply: FastifyReply): void {
    if (error) reply.log.error({ res: reply, err: error, responseTime: reply.elapsedTime }, 'request errored');
    else reply.log.debug({ res: reply, responseTime: reply.elapsedTime }, 'request completed');
  }

  override routeNotFound(request: FastifyRequest): void {
    request.log.debug({ method: request.method, url: request.url }, 'route not found');
  }
}

/** Builds the app; throws when it would serve beyond loopback without a token. */
export async function buildApp(options: AppOptions): Promise<FastifyInstance> {
  // An empty COMMITD_TOKEN is how environments spell "unset"; it must not become the token "".
  const token = options.token === '' ? undefined : options.token;
  const tokens = new TokenSet([...(token === undefined ? [] : [singleToken(token)]), ...(options.tokens ?? [])]);
  assertServable(options.host, tokens.size > 0);

  // Typed as fastify's base logger so the app is a plain `FastifyInstance` for callers.
  const logger: FastifyBaseLogger = options.logger;
  const app = Fastify({
    loggerInstance: logger,
    logController: new QuietLogController(),
    bodyLimit: options.bodyLimit ?? DEFAULT_BODY_LIMIT,
    // Long enough that an over-long key reaches validation; past it, a problem (frameworkErrors).
    routerOptions: { maxParamLength: MAX_PARAM_LENGTH },
    // What fastify or Node refuse before any route (bad URL encoding, a path segment over
    // the limit, headers over the limit, a garbage request line) is a problem too.
    frameworkErrors: handleError,
    clientErrorHandler: handleClientError,
    ajv: {
      // Reject what the schema does not allow instead of quietly dropping or converting it.
      customOptions: { removeAdditional: false, coerceTypes: false },
    },
  });

  // JSON only: a body of any other type (text/plain included, which fastify parses by
  // default) is answered 415 unsupported_media_type. An empty body counts as no body, so
  // clients that always send the header work; values are kept exactly or refused.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('application/json', { parseAs: 'buffer' }, (_request, body, done) => {
    try {
      done(null, parseJsonBody(typeof body === 'string' ? Buffer.from(body, 'utf8') : body));
    } catch (err) {
      done(err instanceof JsonBodyError ? new HttpProblem(400, 'invalid_request', err.message) : (err as Error));
    }
  });

  app.setErrorHandler(handleError);
  const allowed = new AllowedMethods();
  app.addHook('onRoute', (route) => {
    assertDeclaresAccess(route);
    describeAccess(route);
    allowed.add(route.url, route.method);
  });
  app.setNotFoundHandler(notFoundHandler((path) => allowed.for(path)));
  if (tokens.size > 0) {
    app.addHook('onRequest', authenticate(tokens));
    app.addHook('preHandler', confineStores);
  }
  app.addHook('onResponse', async (request, reply) => {
    // The route pattern (`/v1/sessions/:key`), never the path: keys must not become label values.
    const route = request.routeOptions.url ?? 'unmatched';
    options.metrics.httpSeconds.observe({ method: request.method, route, status: String(reply.statusCode) }, reply.elapsedTime / 1000);
  });

  await app.register(swagger, {
    ...openapiOptions((schema) => app.addSchema(schema)),
    openapi: {
      openapi: '3.0.3',
      info: {
        title: 'commitd',
        version: '1',
        description:
          'Commits one unit of work to several datastores with an exactly-once effect. Errors are RFC 9457 application/problem+json. This document is served at /docs/json; docs/api.md in the repository is the reference.',
        contact: { name: 'commitd maintainers' },
        // package.json is private with no licence; npm's documentation is where UNLICENSED is defined.
        license: { name: 'UNLICENSED', url: 'https://docs.npmjs.com/cli/v11/configuring-npm/package-json#license' },
      },
      // Relative: the document describes the commitd that serves it, wherever it listens.
      servers: [{ url: '/', description: 'the commitd serving this document' }],
      components: {
        securitySchemes: {
          bearer: {
            type: 'http',
            scheme: 'bearer',
            description: 'COMMITD_TOKEN or a token of auth.tokens, when any is configured; each route needs one of its scopes (docs/security.md)',
          },
        },
      },
      security: [{ bearer: [] }],
      tags: [
        { name: 'sessions', description: 'Sessions and one-shot commits' },
        { name: 'stores', description: 'Configured stores' },
        { name: 'operations', description: 'Health, readiness, metrics' },
      ],
    },
  });
  await app.register(swaggerUi, { routePrefix: '/docs' });

  await app.register(opsRoutes, { coordinator: options.coordinator, metrics: options.metrics });
  await app.register(sessionRoutes, { coordinator: options.coordinator });
  await app.register(storeRoutes, { coordinator: options.coordinator });
  await app.register(inspectRoutes, { coordinator: options.coordinator });
  await app.register(uiRoutes, { tokens });
  return app;
}

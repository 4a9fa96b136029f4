/**
 * Operational routes: liveness, readiness (the coordinator KV answers) and Prometheus
 * metrics. `/healthz` and `/readyz` are open (probes carry no token); `/metrics` needs the
 * `metrics` scope.
 * @module
 */
import { Type } from '@sinclair/typebox';
import type { FastifyPluginAsync, RawServerDefault } from 'fastify';
import { ServiceUnavailableError } from '../../coordinator/errors.ts';
import type { SessionCoordinator } from '../../coordinator/types.ts';
import { CommitdError } from '../../errors/core.ts';
import type { Metrics } from '../../metrics.ts';
import { HealthReply, MetricsJsonReply, ReadyReply, problemResponses } from '../../contract/schemas.ts';
import type { TypeBoxProvider } from '../type-provider.ts';

export interface OpsRoutesOptions {
  readonly coordinator: SessionCoordinator;
  readonly metrics: Metrics;
}

const tags = ['operations'];

/** True when the client asks for JSON and not for the text format (Prometheus sends text/plain). */
function wantsJson(accept: string | undefined): boolean {
  return accept !== undefined && /\bapplication\/json\b/.test(accept) && !/\btext\/plain\b/.test(accept);
}

export const opsRoutes: FastifyPluginAsync<OpsRoutesOptions, RawServerDefault, TypeBoxProvider> = async (app, { coordinator, metrics }) => {
  app.get(
    '/healthz',
    {
      config: { public: true },
      schema: { tags, operationId: 'health', summary: 'Liveness: the process serves', security: [], response: { 200: HealthReply, ...problemResponses(400) } },
    },
    async () => ({ status: 'ok' as const }),
  );

  app.get(
    '/readyz',
    {
      // Open, like /healthz: a load balancer probes it without a token.
      config: { public: true },
      schema: {
        tags,
        operationId: 'ready',
        summary: 'Readiness: the coordinator KV answers; each store up or down',
        security: [],
        response: { 200: ReadyReply, ...problemResponses(400, 503) },
      },
    },
    async () => {
      try {
        return await coordinator.ready();
      } catch (error) {
        // Whatever stops readiness means "not ready": a 503 (logged with its cause), never a 500.
        if (error instanceof CommitdError && error.code === 'UNAVAILABLE') throw error;
        throw new ServiceUnavailableError('the coordinator is not ready', 1, { cause: error });
      }
    },
  );

  app.get(
    '/metrics',
    {
      config: { scopes: ['metrics'] },
      schema: {
        tags,
        operationId: 'metrics',
        summary: 'Prometheus metrics (text exposition format)',
        response: {
          200: {
            description: 'Metrics: the text exposition format, or prom-client’s JSON form with Accept: application/json',
            content: { 'text/plain': { schema: Type.String() }, 'application/json': { schema: MetricsJsonReply } },
          },
          ...problemResponses(401, 403),
        },
      },
    },
    async (request, reply) => {
      // The console reads the same numbers as JSON (prom-client's own form of the registry).
      if (wantsJson(request.headers.accept)) {
        return reply.type('application/json').send(JSON.stringify(await metrics.registry.getMetricsAsJSON()));
      }
      const text = await metrics.registry.metrics();
      return reply.type(metrics.registry.contentType).send(text);
    },
  );
};

/**
 * Operational routes: liveness, readiness (the coordinator KV answers) and Prometheus
 * metrics. Only `/healthz` is public: it says the process serves, nothing more.
 * @module
 */
import { Type } from '@sinclair/typebox';
import type { FastifyPluginAsync, RawServerDefault } from 'fastify';
import { ServiceUnavailableError } from '../../coordinator/errors.ts';
import type { SessionCoordinator } from '../../coordinator/types.ts';
import { CommitdError } from '../../errors/core.ts';
import type { Metrics } from '../../metrics.ts';
import { HealthReply, ReadyReply, problemResponses } from '../../contract/schemas.ts';
import type { TypeBoxProvider } from '../type-provider.ts';

export interface OpsRoutesOptions {
  readonly coordinator: SessionCoordinator;
  readonly metrics: Metrics;
}

const tags = ['operations'];

export const opsRoutes: FastifyPluginAsync<OpsRoutesOptions, RawServerDefault, TypeBoxProvider> = async (app, { coordinator, metrics }) => {
  app.get(
    '/healthz',
    {
      config: { public: true },
      schema: { tags, operationId: 'health', summary: 'Liveness: the process serves', security: [], response: { 200: HealthReply } },
    },
    async () => ({ status: 'ok' as const }),
  );

  app.get(
    '/readyz',
    {
      schema: {
        tags,
        operationId: 'ready',
        summary: 'Readiness: the coordinator KV answers; each store up or down',
        response: { 200: ReadyReply, ...problemResponses(401, 503) },
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
      schema: {
        tags,
        operationId: 'metrics',
        summary: 'Prometheus metrics (text exposition format)',
        response: { 200: { description: 'Metrics', content: { 'text/plain': { schema: Type.String() } } }, ...problemResponses(401) },
      },
    },
    async (_request, reply) => {
      const text = await metrics.registry.metrics();
      return reply.type(metrics.registry.contentType).send(text);
    },
  );
};

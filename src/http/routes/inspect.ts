/**
 * Read-only routes for operators and the console: the live instances, and the change log of
 * a session the KV still holds.
 * @module
 */
import type { FastifyPluginAsync, RawServerDefault } from 'fastify';
import { InstanceListReply, SessionLogReply, SessionParams, problemResponses } from '../../contract/schemas.ts';
import type { SessionCoordinator } from '../../coordinator/types.ts';
import { HttpProblem } from '../problems.ts';
import type { TypeBoxProvider } from '../type-provider.ts';

export interface InspectRoutesOptions {
  readonly coordinator: SessionCoordinator;
}

export const inspectRoutes: FastifyPluginAsync<InspectRoutesOptions, RawServerDefault, TypeBoxProvider> = async (app, { coordinator }) => {
  app.get(
    '/v1/instances',
    {
      config: { scopes: ['read'] },
      schema: {
        tags: ['operations'],
        operationId: 'listInstances',
        summary: 'The commitd instances whose lease is alive',
        response: { 200: InstanceListReply, ...problemResponses(401, 403, 503) },
      },
    },
    async () => ({ instances: await coordinator.instances() }),
  );

  app.get(
    '/v1/sessions/:key/log',
    {
      config: { scopes: ['read'] },
      schema: {
        tags: ['sessions'],
        operationId: 'getSessionLog',
        summary: 'The change log of a session in the KV (one-shot, committing or failed), secrets masked',
        params: SessionParams,
        response: { 200: SessionLogReply, ...problemResponses(400, 401, 403, 404, 503) },
      },
    },
    async (request) => {
      const { key } = request.params;
      const log = await coordinator.sessionLog(key);
      if (log === undefined)
        throw new HttpProblem(404, 'not_found', `no change log is kept for session ${JSON.stringify(key)}: it is committed, open on its instance, or unknown`);
      return { key, log };
    },
  );
};

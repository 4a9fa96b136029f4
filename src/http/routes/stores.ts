/**
 * Store routes of HTTP API v1: list the configured stores, register one of a loaded type,
 * remove one. Registering and removing are operator actions: they sit behind the token
 * like every route but `/healthz`.
 * @module
 */
import { Type } from '@sinclair/typebox';
import type { FastifyPluginAsync, RawServerDefault } from 'fastify';
import type { SessionCoordinator } from '../../coordinator/types.ts';
import { AddStoreBody, StoreInfoReply, StoreListReply, StoreParams, problemResponses } from '../../contract/schemas.ts';
import type { TypeBoxProvider } from '../type-provider.ts';
import { principalName } from '../principal.ts';

export interface StoreRoutesOptions {
  readonly coordinator: SessionCoordinator;
}

const tags = ['stores'];

export const storeRoutes: FastifyPluginAsync<StoreRoutesOptions, RawServerDefault, TypeBoxProvider> = async (app, { coordinator }) => {
  app.get(
    '/v1/stores',
    {
      schema: {
        tags,
        operationId: 'listStores',
        summary: 'The configured stores',
        response: { 200: StoreListReply, ...problemResponses(401) },
      },
    },
    async () => ({ stores: coordinator.listStores(), removed: (await coordinator.storeRemovals?.()) ?? [] }),
  );

  app.post(
    '/v1/stores',
    {
      schema: {
        tags,
        operationId: 'addStore',
        summary: 'Register a store of a loaded type',
        body: AddStoreBody,
        response: { 201: StoreInfoReply, ...problemResponses(400, 401, 503) },
      },
    },
    async (request, reply) => {
      const { name, type, options } = request.body;
      const store = await coordinator.addStore({ name, type, options: options ?? {} }, principalName(request));
      return reply.code(201).send(store);
    },
  );

  app.delete(
    '/v1/stores/:name',
    {
      schema: {
        tags,
        operationId: 'removeStore',
        summary: 'Remove a store',
        params: StoreParams,
        response: { 204: Type.Null({ description: 'Store removed' }), ...problemResponses(400, 401, 404, 409, 503) },
      },
    },
    async (request, reply) => {
      await coordinator.removeStore(request.params.name, principalName(request));
      return reply.code(204).send(null);
    },
  );
};

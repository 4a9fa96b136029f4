/**
 * Store routes of HTTP API v1: list the configured stores, register one of a loaded type,
 * remove one. Listing needs the `read` scope; registering and removing, `admin`.
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
      config: { scopes: ['read'] },
      schema: {
        tags,
        operationId: 'listStores',
        summary: 'The configured stores',
        response: { 200: StoreListReply, ...problemResponses(401, 403) },
      },
    },
    async () => ({ stores: coordinator.listStores(), removed: (await coordinator.storeRemovals?.()) ?? [] }),
  );

  app.post(
    '/v1/stores',
    {
      config: { scopes: ['admin'] },
      schema: {
        tags,
        operationId: 'addStore',
        summary: 'Register a store of a loaded type',
        body: AddStoreBody,
        response: { 201: StoreInfoReply, ...problemResponses(400, 401, 403, 503) },
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
      config: { scopes: ['admin'] },
      schema: {
        tags,
        operationId: 'removeStore',
        summary: 'Remove a store',
        params: StoreParams,
        response: { 204: Type.Null({ description: 'Store removed' }), ...problemResponses(400, 401, 403, 404, 409, 503) },
      },
    },
    async (request, reply) => {
      await coordinator.removeStore(request.params.name, principalName(request));
      return reply.code(204).send(null);
    },
  );
};

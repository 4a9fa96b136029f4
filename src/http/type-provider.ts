/**
 * Types a route's request and reply objects from its TypeBox schemas.
 * @module
 */
import type { Static, TSchema } from '@sinclair/typebox';
import type { FastifyTypeProvider } from 'fastify';
import type { DeepReadonly } from '../contract/schemas.ts';

/**
 * Types request and reply objects from the TypeBox schemas of a route. Our own (eight lines),
 * because `@fastify/type-provider-typebox` 6 is written against `typebox` 1.x, not the
 * `@sinclair/typebox` 0.34 the project uses; validation stays with fastify's Ajv.
 */
export interface TypeBoxProvider extends FastifyTypeProvider {
  readonly validator: this['schema'] extends TSchema ? Static<this['schema']> : unknown;
  readonly serializer: this['schema'] extends TSchema ? DeepReadonly<Static<this['schema']>> : unknown;
}

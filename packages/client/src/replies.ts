/**
 * The server's replies, typed and checked against the same TypeBox schemas the routes
 * declare (`src/contract/schemas.ts`), so client and server share one definition and nothing
 * unchecked leaves the client. A reply of the wrong shape is a `ReplyShapeError`, which
 * the transport reports as a protocol error.
 * @module
 */
import { Type, type Static, type TSchema } from '@sinclair/typebox';
import { Ajv, type ValidateFunction } from 'ajv';
import * as schemas from '../../../src/contract/schemas.ts';

/** A committed session: the answer to commit, one-shot commit, and every replay of them. */
export type CommittedReply = Static<typeof schemas.CommittedReply>;
/** An open session as begin answers it. */
export type ActiveReply = Static<typeof schemas.ActiveReply>;
/** The answer to an apply: `applied` counts the changes of that request. */
export type ApplyReply = Static<typeof schemas.ApplyReply>;
export type CancelReply = Static<typeof schemas.CancelReply>;
/** A session's state (`GET /v1/sessions/:key`, and each entry of the list). */
export type SessionReply = Static<typeof schemas.SessionReply>;
/** The answer to an operator's `abandon`. */
export type AbandonedReply = Static<typeof schemas.AbandonedReply>;
/** A configured store. */
export type StoreInfoReply = Static<typeof schemas.StoreInfoReply>;
/** Session states an operator can list by. */
export type ListableState = NonNullable<Static<typeof schemas.ListSessionsQuery>['state']>;
/** A store to register at run time. */
export type StoreDefinition = Static<typeof schemas.AddStoreBody>;

/** A reply that is not what the contract says. */
export class ReplyShapeError extends Error {}

// Ajv, not TypeBox's `Value`: the schemas use `Type.Unsafe` enums, which only a JSON Schema
// validator understands — and Ajv is what checks them on the server side too.
const ajv = new Ajv();

/** A parser for replies of `schema`, compiled at its first use: a CLI run needs one or two of them. */
function parser<S extends TSchema>(schema: S): (value: unknown) => Static<S> {
  let validate: ValidateFunction<Static<S>> | undefined;
  return (value) => {
    validate ??= ajv.compile<Static<S>>(schema);
    if (!validate(value)) throw new ReplyShapeError(ajv.errorsText(validate.errors, { dataVar: 'reply' }));
    return value;
  };
}

export const parseCommitted = parser(schemas.CommittedReply);
/** A begin's answer: an open session, or the replay of a committed one. */
export const parseBegun = parser(Type.Union([schemas.ActiveReply, schemas.CommittedReply]));
export const parseApplied = parser(schemas.ApplyReply);
export const parseCancelled = parser(schemas.CancelReply);
export const parseSession = parser(schemas.SessionReply);
export const parseResolved = parser(schemas.ResolveReply);
export const parseStore = parser(schemas.StoreInfoReply);

const parseSessionListReply = parser(schemas.SessionListReply);
const parseStoreListReply = parser(schemas.StoreListReply);

/** A page of `GET /v1/sessions`: newest first, `nextCursor` when more follow. */
export type SessionPage = Static<typeof schemas.SessionListReply>;
export const parseSessionPage = parseSessionListReply;
/** `GET /v1/stores`, unwrapped. */
export const parseStoreList = (value: unknown): StoreInfoReply[] => parseStoreListReply(value).stores;

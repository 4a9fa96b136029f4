/**
 * The limits commitd sets on every store's statements (DESIGN "The boundary", point 2): the
 * `statementTimeout` store option, shared by every built-in type, in the config's duration
 * grammar.
 * @module
 */
import { Type } from '@sinclair/typebox';
import ms from 'ms';

/** A statement of a worker's change runs at most this long unless the store says otherwise. */
export const DEFAULT_STATEMENT_TIMEOUT_MS = 5000;

/** The grammar of every duration commitd reads (config file and store options): a number and one unit. */
export const DURATION = /^\d+(?:\.\d+)?(?:ms|s|m|h|d)$/;

/** The `statementTimeout` store option: a number of seconds, or a duration such as "5s", "500ms". */
export const StatementTimeoutOption = Type.Union([Type.Number({ exclusiveMinimum: 0 }), Type.String({ pattern: DURATION.source })], {
  description: 'How long one statement of a change may run before it is aborted (seconds, or "5s", "500ms"); default 5 s',
});

/** Milliseconds of a `statementTimeout` option (already valid against its schema), or the default. */
export function statementTimeoutMs(value: number | string | undefined): number {
  if (value === undefined) return DEFAULT_STATEMENT_TIMEOUT_MS;
  const millis = typeof value === 'number' ? value * 1000 : ms(value.trim() as ms.StringValue);
  return Math.max(1, Math.round(millis));
}

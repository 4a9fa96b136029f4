/**
 * Failpoints (DESIGN.md, contract): `COMMITD_FAILPOINTS="point=action;point=action"` with
 * actions `crash` (SIGKILL self), `error` and `delay(ms)`. Inert and cheap when unset.
 * @module
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { CommitdError } from '../errors/core.ts';

/** The moments a failpoint can name; `commit.afterStore.N` counts committed stores from 1. */
export const FAILPOINT_NAMES = ['begin.afterRecord', 'commit.afterIntent', 'commit.beforeResult', 'commit.afterAnswer', 'recovery.afterAdopt'] as const;

type Action = { readonly kind: 'crash' } | { readonly kind: 'error' } | { readonly kind: 'delay'; readonly ms: number };

/** The error a failpoint with action `error` throws. */
export class FailpointError extends CommitdError {
  constructor(point: string) {
    super('FAILPOINT', `failpoint ${point} fired`);
  }
}

/** A failpoint specification that does not parse. */
export class FailpointSpecError extends CommitdError {
  constructor(message: string) {
    super('INVALID_CONFIG', `COMMITD_FAILPOINTS: ${message}`);
  }
}

const STORE_POINT = /^commit\.afterStore\.([1-9]\d*)$/;

function parseAction(point: string, text: string): Action {
  if (text === 'crash' || text === 'error') return { kind: text };
  const delay = /^delay\((\d+)\)$/.exec(text);
  if (delay) return { kind: 'delay', ms: Number(delay[1]) };
  throw new FailpointSpecError(`${point}: unknown action ${JSON.stringify(text)} (crash, error, delay(ms))`);
}

/** The failpoints of one process. */
export class Failpoints {
  readonly #actions = new Map<string, Action>();

  /** Parses `point=action;…`; empty or undefined gives inert failpoints. */
  constructor(spec: string | undefined) {
    for (const part of (spec ?? '')
      .split(';')
      .map((p) => p.trim())
      .filter(Boolean)) {
      const eq = part.indexOf('=');
      if (eq < 0) throw new FailpointSpecError(`${JSON.stringify(part)} is not point=action`);
      const point = part.slice(0, eq).trim();
      if (!(FAILPOINT_NAMES as readonly string[]).includes(point) && !STORE_POINT.test(point)) {
        throw new FailpointSpecError(`unknown point ${JSON.stringify(point)}`);
      }
      this.#actions.set(point, parseAction(point, part.slice(eq + 1).trim()));
    }
  }

  /** True when `point` has an action (a caller may then make room for it first). */
  armed(point: string): boolean {
    return this.#actions.has(point);
  }

  /** Fires `point` if it is set: crash, throw or wait. A no-op otherwise. */
  async fire(point: string): Promise<void> {
    if (this.#actions.size === 0) return;
    const action = this.#actions.get(point);
    if (!action) return;
    switch (action.kind) {
      case 'crash':
        process.kill(process.pid, 'SIGKILL');
        await sleep(60_000); // SIGKILL is not synchronous; never run past the point
        return;
      case 'error':
        throw new FailpointError(point);
      case 'delay':
        await sleep(action.ms);
    }
  }
}

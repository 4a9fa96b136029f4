/**
 * The `http` store type: a participant service reached over HTTP with try / confirm /
 * cancel (DESIGN.md "The http participant protocol"). Changes (`{action, body?}`) are kept
 * until prepare, which sends them in one `try`; after the commit point `confirm` is retried
 * until the participant answers `2xx`; a session cancelled after its try was sent (or
 * perhaps sent) is `cancel`led.
 *
 * There is no marker in the participant that commitd could read: the participant's barrier
 * makes a repeated confirm a no-op, and commitd records in the session's result which
 * participants confirmed. So a recovery never skips this store: it sends confirm again, and
 * the store ID is the hash of the logged changes, as on the first run.
 * @module
 */
import { randomUUID } from 'node:crypto';
import { connect } from 'node:net';
import { Type } from '@sinclair/typebox';
import type { Logger } from 'pino';
import { describeKey } from '../../core/keys.ts';
import { ChangeHasher } from '../../core/session-id.ts';
import { NotWritableError } from '../../errors/core.ts';
import type { Store, StoreContext, StoreSession, StoreSessionContext, StoreType } from '../api.ts';
import { ChangeRejectedError, StoreUnavailableError } from '../errors.ts';
import { backoffMs, callParticipant, sleep, type CallTarget } from './protocol.ts';

/** Options of an `http` store. */
export interface HttpOptions {
  /** The participant's base URL (`http:` or `https:`); commitd POSTs to `{baseUrl}/try`, `/confirm`, `/cancel`. */
  readonly baseUrl: string;
  /** Extra headers of every call (a token for the participant, say); not `content-type` or `idempotency-key`. */
  readonly headers?: Readonly<Record<string, string>>;
  /** Bound of one call, from sending it to the end of its answer, in ms (default 5000). */
  readonly timeoutMs?: number;
  readonly retry?: {
    /** Calls of `try` (and of `cancel`) before giving up: bounded before the commit point (default 3). */
    readonly attempts?: number;
    /** First wait between calls, doubled each time up to `maxBackoffMs` (defaults 100 and 2000). */
    readonly backoffMs?: number;
    readonly maxBackoffMs?: number;
    /**
     * How long one commit retries `confirm` in process before leaving the session to
     * recovery, which retries it again on every pass until the participant answers (default 30000).
     */
    readonly confirmForMs?: number;
  };
}

/** One change: an action of the participant's, with its body. */
export interface HttpChange {
  readonly action: string;
  readonly body?: unknown;
}

/** Headers commitd sets itself (or the HTTP stack does): the options may not name them. */
const RESERVED_HEADERS = new Set(['content-type', 'idempotency-key', 'content-length', 'host', 'transfer-encoding', 'connection']);

const DEFAULTS = { timeoutMs: 5000, attempts: 3, backoffMs: 100, maxBackoffMs: 2000, confirmForMs: 30_000 } as const;

const optionsSchema = Type.Object(
  {
    baseUrl: Type.String({ minLength: 1, maxLength: 2000 }),
    headers: Type.Optional(
      Type.Record(Type.String({ pattern: "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$" }), Type.String({ pattern: '^[^\\r\\n\\0]*$', maxLength: 8000 }), {
        maxProperties: 50,
      }),
    ),
    timeoutMs: Type.Optional(Type.Integer({ minimum: 1, maximum: 120_000 })),
    retry: Type.Optional(
      Type.Object(
        {
          attempts: Type.Optional(Type.Integer({ minimum: 1, maximum: 20 })),
          backoffMs: Type.Optional(Type.Integer({ minimum: 1, maximum: 60_000 })),
          maxBackoffMs: Type.Optional(Type.Integer({ minimum: 1, maximum: 600_000 })),
          confirmForMs: Type.Optional(Type.Integer({ minimum: 1, maximum: 3_600_000 })),
        },
        { additionalProperties: false },
      ),
    ),
  },
  { additionalProperties: false },
);

const changeSchema = Type.Object(
  {
    action: Type.String({ minLength: 1, maxLength: 200 }),
    body: Type.Optional(Type.Unknown()),
  },
  { additionalProperties: false },
);

/** The settings one store's calls share. */
interface Participant {
  readonly name: string;
  readonly target: CallTarget;
  readonly attempts: number;
  readonly backoffMs: number;
  readonly maxBackoffMs: number;
  readonly confirmForMs: number;
  readonly logger: Logger;
}

/** The base URL as a URL, refusing what the protocol cannot call. */
export function parseBaseUrl(text: string): URL {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new Error(`baseUrl ${JSON.stringify(text)} is not a URL`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new Error(`baseUrl must be an http: or https: URL, not ${url.protocol}`);
  if (url.username || url.password) throw new Error('baseUrl must not carry credentials: put them in headers');
  if (url.hash) throw new Error('baseUrl must not have a fragment');
  return url;
}

/** Resolves once a TCP connection to the participant opens: registration refuses a service that cannot be reached. */
function probe(url: URL, timeoutMs: number): Promise<void> {
  const port = Number(url.port || (url.protocol === 'https:' ? 443 : 80));
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
  return new Promise((resolve, reject) => {
    const socket = connect({ host, port, timeout: timeoutMs });
    socket.once('connect', () => {
      socket.destroy();
      resolve();
    });
    socket.once('timeout', () => {
      socket.destroy();
      reject(new Error(`${url.host} did not accept a connection within ${timeoutMs} ms`));
    });
    socket.once('error', (err) => reject(new Error(`${url.host} cannot be reached: ${err.message}`)));
  });
}

/** Sends `cancel` for one attempt, a bounded number of times; a refusal is logged, not retried. */
async function cancelAttempt(participant: Participant, key: Uint8Array, attempt: string): Promise<void> {
  const keyText = describeKey(key);
  let reason = '';
  for (let n = 1; n <= participant.attempts; n++) {
    if (n > 1) await sleep(backoffMs(n - 1, participant.backoffMs, participant.maxBackoffMs));
    const outcome = await callParticipant(participant.target, 'cancel', keyText, { key: keyText, attempt, store: participant.name });
    if (outcome.kind === 'accepted') return;
    if (outcome.kind === 'refused') {
      // Nothing commitd can do changes a refusal (a cancel after a confirm, which commitd never sends).
      participant.logger.error({ key: keyText, attempt, participant: outcome.problem }, 'the participant refused a cancel');
      return;
    }
    reason = outcome.reason;
  }
  throw new StoreUnavailableError(
    `participant ${participant.name} did not accept cancel of ${JSON.stringify(keyText)} after ${participant.attempts} calls: ${reason}`,
    {
      phase: 'cancel',
    },
  );
}

function describeProblem(problem: Readonly<Record<string, unknown>>): string {
  const text = [problem.title, problem.detail].filter((part) => typeof part === 'string' && part).join(': ');
  return text ? ` (${text})` : '';
}

type Mode = 'idle' | 'writable' | 'prepared';

/** One session on a participant: changes kept until prepare, then try, confirm or cancel. */
class HttpSession implements StoreSession<HttpChange> {
  readonly skipping = false;
  readonly #participant: Participant;
  readonly #attempt: string;
  #mode: Mode = 'idle';
  #recovering = false;
  #changes: HttpChange[] = [];
  #hasher: ChangeHasher | undefined;
  #preparedId: Uint8Array | undefined;
  /** The key whose try was sent (perhaps without an answer): a cancel must reach the participant. */
  #tried: Uint8Array | undefined;

  constructor(participant: Participant, attempt: string) {
    this.#participant = participant;
    this.#attempt = attempt;
  }

  async begin(): Promise<void> {
    this.#open(false);
  }

  /** After a crash past the commit point: the try was accepted then, so prepare sends nothing and commit confirms. */
  async beginRecovery(): Promise<void> {
    this.#open(true);
  }

  async apply(change: HttpChange): Promise<void> {
    if (this.#mode !== 'writable' || !this.#hasher) throw new NotWritableError(`${this.#participant.name} is not writable (${this.#mode})`);
    this.#hasher.add(change);
    this.#changes.push(change);
  }

  async prepare(key: Uint8Array): Promise<void> {
    if (this.#mode === 'prepared') return;
    if (this.#mode !== 'writable' || !this.#hasher) throw new NotWritableError(`${this.#participant.name} cannot prepare (${this.#mode})`);
    const id = this.#hasher.digest();
    if (!this.#recovering) await this.#try(key);
    this.#preparedId = id;
    this.#mode = 'prepared';
  }

  async commit(key: Uint8Array): Promise<Uint8Array> {
    if (this.#mode === 'writable') await this.prepare(key);
    if (this.#mode !== 'prepared' || !this.#preparedId) throw new NotWritableError(`${this.#participant.name} cannot commit (${this.#mode})`);
    await this.#confirm(key);
    const id = this.#preparedId;
    this.#reset();
    return id;
  }

  /** Before the commit point: undo the try if one was sent. */
  async cancel(): Promise<void> {
    const tried = this.#tried;
    this.#reset();
    if (tried) await cancelAttempt(this.#participant, tried, this.#attempt);
  }

  /** At or past the commit point: forget the session here; whoever recovers it confirms. */
  async release(): Promise<void> {
    this.#reset();
  }

  async #try(key: Uint8Array): Promise<void> {
    const { name, attempts, target } = this.#participant;
    const keyText = describeKey(key);
    const body = { key: keyText, attempt: this.#attempt, store: name, changes: this.#changes };
    this.#tried = key;
    let reason = '';
    for (let n = 1; n <= attempts; n++) {
      if (n > 1) await sleep(backoffMs(n - 1, this.#participant.backoffMs, this.#participant.maxBackoffMs));
      const outcome = await callParticipant(target, 'try', keyText, body);
      if (outcome.kind === 'accepted') return;
      if (outcome.kind === 'refused') {
        throw new ChangeRejectedError(`participant ${name} refused the try with ${outcome.status}${describeProblem(outcome.problem)}`, {
          phase: 'try',
          participant: outcome.problem,
        });
      }
      reason = outcome.reason;
    }
    throw new StoreUnavailableError(`participant ${name} did not accept the try after ${attempts} calls: ${reason}`, { phase: 'try' });
  }

  async #confirm(key: Uint8Array): Promise<void> {
    const { name, target, confirmForMs, logger } = this.#participant;
    const keyText = describeKey(key);
    const body = { key: keyText, attempt: this.#attempt, store: name };
    const deadline = Date.now() + confirmForMs;
    for (let n = 1; ; n++) {
      const outcome = await callParticipant(target, 'confirm', keyText, body);
      if (outcome.kind === 'accepted') return;
      if (outcome.kind === 'refused') {
        throw new ChangeRejectedError(`participant ${name} refused the confirm with ${outcome.status}${describeProblem(outcome.problem)}`, {
          phase: 'confirm',
          participant: outcome.problem,
        });
      }
      const wait = backoffMs(n, this.#participant.backoffMs, this.#participant.maxBackoffMs);
      if (Date.now() + wait > deadline) {
        throw new StoreUnavailableError(`participant ${name} did not accept the confirm for ${confirmForMs} ms (${outcome.reason}); recovery retries it`, {
          phase: 'confirm',
        });
      }
      logger.warn({ key: keyText, reason: outcome.reason }, 'confirm not accepted yet; retrying');
      await sleep(wait);
    }
  }

  #open(recovering: boolean): void {
    this.#reset();
    this.#recovering = recovering;
    this.#hasher = new ChangeHasher();
    this.#mode = 'writable';
  }

  #reset(): void {
    this.#mode = 'idle';
    this.#recovering = false;
    this.#changes = [];
    this.#hasher = undefined;
    this.#preparedId = undefined;
    this.#tried = undefined;
  }
}

/** The built-in `http` store type. */
export const httpStoreType: StoreType<HttpOptions, HttpChange> = {
  type: 'http',
  optionsSchema,
  changeSchema,
  async create(options: HttpOptions, ctx: StoreContext): Promise<Store<HttpChange>> {
    const baseUrl = parseBaseUrl(options.baseUrl);
    const headers = options.headers ?? {};
    const reserved = Object.keys(headers).find((name) => RESERVED_HEADERS.has(name.toLowerCase()));
    if (reserved !== undefined) throw new Error(`headers may not set ${reserved}: commitd sets it`);
    const timeoutMs = options.timeoutMs ?? DEFAULTS.timeoutMs;
    await probe(baseUrl, timeoutMs);
    const participant: Participant = {
      name: ctx.name,
      target: { baseUrl, headers, timeoutMs },
      attempts: options.retry?.attempts ?? DEFAULTS.attempts,
      backoffMs: options.retry?.backoffMs ?? DEFAULTS.backoffMs,
      maxBackoffMs: options.retry?.maxBackoffMs ?? DEFAULTS.maxBackoffMs,
      confirmForMs: options.retry?.confirmForMs ?? DEFAULTS.confirmForMs,
      logger: ctx.logger,
    };
    return {
      name: ctx.name,
      type: 'http',
      session: (context?: StoreSessionContext) => new HttpSession(participant, context?.attempt ?? randomUUID()),
      cancelAttempt: (key: Uint8Array, attempt: string) => cancelAttempt(participant, key, attempt),
      close: async () => undefined,
    };
  },
};

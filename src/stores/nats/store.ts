/**
 * The `nats` store type: messages published to a NATS JetStream stream exactly once, after
 * the commit point — an outbox without an outbox table. A change is `{subject, data,
 * headers?}`; the changes are buffered in the session and published only in `commit`, one
 * after the other (so the stream keeps their order), each with a `Nats-Msg-Id` derived
 * from the store, the key, the store's ID for the session and the change's position. A
 * roll-forward after a crash publishes the same messages with the same IDs again and the
 * stream's duplicate window drops the repeats. Once every message is acknowledged the
 * marker `<store>.<hex key>` is created (create-if-absent) in a JetStream KV bucket; a
 * recovery that finds it skips, and a second committer's create fails and skips.
 *
 * Decisions (docs/nats.md says the same for users):
 * - Exactly once holds within the stream's `duplicate_window`, so a store opens only on a
 *   stream whose window is at least the retention period; the marker bucket, when commitd
 *   creates it, keeps markers for that window, so a key reused within it is refused.
 * - The message ID carries the store's ID for the session (the hash of its changes): only
 *   a committed session publishes (a cancelled attempt publishes nothing), so key, store and
 *   position already name one message; the ID keeps a key reused with other changes after
 *   its marker is gone from being dropped as a duplicate of the earlier session.
 * - Every `Nats-*` header is the server's to interpret (IDs, expectations, rollups,
 *   schedules, TTLs): a change may set none of them.
 * - What NATS would refuse for good at publish time (a subject outside the stream, a
 *   message over the size limit) is refused at apply, before the commit point.
 * @module
 */
import { jetstream, jetstreamManager, JetStreamApiError, type JetStreamClient, type JetStreamManager, type StreamInfo } from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import { connect, headers as natsHeaders, type NatsConnection } from '@nats-io/transport-node';
import { Type } from '@sinclair/typebox';
import type { Logger } from 'pino';
import { CommitdError, errorMessage } from '../../errors/core.ts';
import { describeKey, fromHex, toHex } from '../../core/keys.ts';
import { canonicalJson, ID_BYTES } from '../../core/session-id.ts';
import { withTimeout } from '../../kv/deadline.ts';
import { BookkeepingError } from '../errors.ts';
import { StatementTimeoutOption, statementTimeoutMs } from '../limits.ts';
import { ChangeRejectedError, HelperCommittable, MarkerExistsError, StoreUnavailableError, type StoreDriver } from '../helper.ts';
import type { Store, StoreContext, StoreType } from '../api.ts';
import { publishSubjectProblem, reservedSubjectRule, subjectMatches } from './subjects.ts';

/** Options of a `nats` store. */
export interface NatsOptions {
  /** NATS server URLs, e.g. `nats://127.0.0.1:4222`. */
  readonly servers: string | readonly string[];
  /** The JetStream stream the messages go to; it must exist, its subjects must cover theirs. */
  readonly stream: string;
  /** The KV bucket of the markers; default {@link DEFAULT_MARKER_BUCKET}, created when absent. */
  readonly markerBucket?: string;
  /** Bound of every NATS request (publish acknowledgements included): seconds, or "5s", "500ms"; default 5 s. */
  readonly statementTimeout?: number | string;
}

/** One change: one message. */
export interface NatsChange {
  readonly subject: string;
  /** A string is published as its UTF-8 bytes; any other JSON value as its canonical JSON (RFC 8785). */
  readonly data: unknown;
  readonly headers?: Readonly<Record<string, string>>;
}

/** The marker bucket of a store that names none; stores share it, each marker key starts with the store's name. */
export const DEFAULT_MARKER_BUCKET = 'commitd_markers';

/** Headers reserved for the NATS server (compared case-insensitively). */
export const RESERVED_HEADER_PREFIX = 'nats-';

/** Bound of connecting at open. */
const CONNECT_TIMEOUT_MS = 5_000;
const NANOS_PER_SECOND = 1_000_000_000;
/** JetStream's API code for a KV create that found the key (wrong last subject sequence). */
const WRONG_LAST_SEQUENCE = 10071;
/** HTTP token characters (RFC 9110), what a NATS header name is made of. */
const HEADER_NAME = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

const optionsSchema = Type.Object(
  {
    servers: Type.Union([Type.String({ minLength: 1 }), Type.Array(Type.String({ minLength: 1 }), { minItems: 1 })]),
    stream: Type.String({ minLength: 1, pattern: '^[^.*>\\s]+$' }),
    markerBucket: Type.Optional(Type.String({ pattern: '^[-\\w]+$', maxLength: 200 })),
    statementTimeout: Type.Optional(StatementTimeoutOption),
  },
  { additionalProperties: false },
);

const changeSchema = Type.Object(
  {
    subject: Type.String({ minLength: 1 }),
    data: Type.Unknown({ description: 'A string (published as its UTF-8 bytes) or any JSON value (published as its canonical JSON)' }),
    headers: Type.Optional(Type.Record(Type.String(), Type.String())),
  },
  { additionalProperties: false },
);

/** A change the `nats` type cannot publish (subject, header, size): a bad request, refused before anything is applied. */
export class InvalidNatsChangeError extends CommitdError {
  constructor(message: string) {
    super('INVALID_REQUEST', message);
  }
}

/** A message larger than the server or the stream takes. */
export class NatsMessageTooLargeError extends CommitdError {
  constructor(message: string) {
    super('PAYLOAD_TOO_LARGE', message);
  }
}

/** The stream cannot carry exactly-once messages (missing, window too short, no subjects). */
export class NatsStreamError extends CommitdError {
  constructor(message: string) {
    super('INVALID_REQUEST', message);
  }
}

/** What a store keeps of its stream: refreshed at every prepare. */
interface StreamView {
  readonly subjects: readonly string[];
  readonly duplicateWindowSeconds: number;
  /** Largest message (headers and data) the stream takes; -1: no limit of its own. */
  readonly maxMsgSize: number;
}

/** One buffered message, encoded at apply so that commit cannot fail on it. */
interface OutgoingMessage {
  readonly subject: string;
  readonly data: Uint8Array;
  readonly headers: readonly (readonly [string, string])[];
}

const utf8 = new TextEncoder();

/** A store's connection, stream and marker bucket. */
class NatsBackend {
  readonly name: string;
  readonly streamName: string;
  readonly markerBucket: string;
  readonly timeoutMs: number;
  readonly #retentionSeconds: number;
  readonly #nc: NatsConnection;
  readonly #js: JetStreamClient;
  readonly #jsm: JetStreamManager;
  #kv: KV | undefined;
  #stream: StreamView;

  private constructor(name: string, options: NatsOptions, ctx: StoreContext, nc: NatsConnection, jsm: JetStreamManager, timeoutMs: number) {
    this.name = name;
    this.streamName = options.stream;
    this.markerBucket = options.markerBucket ?? DEFAULT_MARKER_BUCKET;
    this.timeoutMs = timeoutMs;
    this.#retentionSeconds = ctx.retentionSeconds;
    this.#nc = nc;
    this.#jsm = jsm;
    this.#js = jetstream(nc, { timeout: timeoutMs });
    this.#stream = { subjects: [], duplicateWindowSeconds: 0, maxMsgSize: -1 };
  }

  /** Connects, checks the stream and opens (or creates) the marker bucket; refuses what cannot give exactly once. */
  static async open(options: NatsOptions, ctx: StoreContext): Promise<NatsBackend> {
    const timeoutMs = statementTimeoutMs(options.statementTimeout);
    const servers = typeof options.servers === 'string' ? options.servers.split(',').map((server) => server.trim()) : [...options.servers];
    let nc: NatsConnection;
    try {
      nc = await connect({
        servers,
        name: `commitd/${ctx.name}`,
        timeout: CONNECT_TIMEOUT_MS,
        // A store outlives any outage: reconnect for ever; requests meanwhile time out (503).
        maxReconnectAttempts: -1,
        reconnectTimeWait: 250,
      });
    } catch (err) {
      throw new StoreUnavailableError(`nats store ${ctx.name}: cannot connect to ${servers.join(', ')}: ${errorMessage(err)}`, {}, { cause: err });
    }
    try {
      const jsm = await jetstreamManager(nc, { timeout: timeoutMs });
      const backend = new NatsBackend(ctx.name, options, ctx, nc, jsm, timeoutMs);
      await backend.refreshStream();
      await backend.#openMarkerBucket();
      backend.#watchStatus(ctx.logger);
      return backend;
    } catch (err) {
      await nc.close().catch(() => undefined);
      throw err;
    }
  }

  get stream(): StreamView {
    return this.#stream;
  }

  /** Reads the stream's configuration again and checks it still gives exactly once. */
  async refreshStream(): Promise<StreamView> {
    let info: StreamInfo;
    try {
      info = await this.#jsm.streams.info(this.streamName);
    } catch (err) {
      if (err instanceof JetStreamApiError && err.code === 10059) {
        throw new NatsStreamError(`nats store ${this.name}: there is no JetStream stream named ${JSON.stringify(this.streamName)}; create it first`);
      }
      throw this.unavailable(err, 'stream info');
    }
    const { config } = info;
    const windowSeconds = (config.duplicate_window ?? 0) / NANOS_PER_SECOND;
    if (windowSeconds < this.#retentionSeconds) {
      throw new NatsStreamError(
        `nats store ${this.name}: stream ${this.streamName} drops duplicate messages for ${windowSeconds} s (duplicate_window) but commitd keeps ` +
          `results for ${this.#retentionSeconds} s (retention); exactly once holds only within the window, so the window must be at least the retention`,
      );
    }
    if (!config.subjects || config.subjects.length === 0) {
      throw new NatsStreamError(
        `nats store ${this.name}: stream ${this.streamName} listens on no subjects (a mirror or sourced stream); commitd publishes to subjects`,
      );
    }
    if (config.sealed) throw new NatsStreamError(`nats store ${this.name}: stream ${this.streamName} is sealed and takes no messages`);
    if (this.streamName === `KV_${this.markerBucket}`) {
      throw new NatsStreamError(`nats store ${this.name}: stream ${this.streamName} is the marker bucket ${this.markerBucket}, commitd's own`);
    }
    this.#stream = { subjects: [...config.subjects], duplicateWindowSeconds: windowSeconds, maxMsgSize: config.max_msg_size ?? -1 };
    return this.#stream;
  }

  /** Largest message the connection carries (the server's `max_payload`). */
  get maxPayload(): number {
    return this.#nc.info?.max_payload ?? 1024 * 1024;
  }

  /** The ID stored in `key`'s marker, if any. */
  async readMarker(key: Uint8Array): Promise<Uint8Array | undefined> {
    try {
      const entry = await this.#markers().get(this.#markerKey(key));
      return entry && entry.operation === 'PUT' ? fromHex(entry.string()) : undefined;
    } catch (err) {
      throw this.unavailable(err, 'marker read');
    }
  }

  /** Creates `key`'s marker if absent; throws `MarkerExistsError` with the stored ID if it is there. */
  async createMarker(key: Uint8Array, id: Uint8Array): Promise<void> {
    try {
      await this.#markers().create(this.#markerKey(key), toHex(id));
      return;
    } catch (err) {
      if (!(err instanceof JetStreamApiError && err.code === WRONG_LAST_SEQUENCE)) throw this.unavailable(err, 'marker write');
    }
    const stored = await this.readMarker(key);
    if (!stored)
      throw new StoreUnavailableError(`nats store ${this.name}: the marker of ${JSON.stringify(describeKey(key))} changed while it was written; retry`);
    throw new MarkerExistsError(key, stored);
  }

  /**
   * Publishes one message and waits for the stream's acknowledgement; true when the
   * stream dropped it as a duplicate. The server refusing it is a rejection (an operator
   * looks at the session); no answer is a passing failure.
   */
  async publish(message: OutgoingMessage, msgId: string): Promise<boolean> {
    const hdrs = natsHeaders();
    for (const [name, value] of message.headers) hdrs.append(name, value);
    try {
      const ack = await this.#js.publish(message.subject, message.data, {
        msgID: msgId,
        headers: hdrs,
        timeout: this.timeoutMs,
        expect: { streamName: this.streamName },
      });
      return ack.duplicate;
    } catch (err) {
      if (err instanceof JetStreamApiError) {
        throw new ChangeRejectedError(
          `stream ${this.streamName} refused the message to ${JSON.stringify(message.subject)}: ${err.message}`,
          { natsCode: err.code, subject: message.subject },
          { cause: err },
        );
      }
      throw this.unavailable(err, 'publish');
    }
  }

  /** A connection-level failure as `StoreUnavailableError`; commitd's own errors pass through. */
  unavailable(err: unknown, doing: string): unknown {
    if (err instanceof CommitdError) return err;
    return new StoreUnavailableError(`nats store ${this.name} is unavailable (${doing}): ${errorMessage(err)}`, {}, { cause: err });
  }

  async close(): Promise<void> {
    await withTimeout(this.#nc.close(), this.timeoutMs, () => new Error('close timed out')).catch(() => undefined);
  }

  async #openMarkerBucket(): Promise<void> {
    try {
      // Created with the stream's window as its TTL: a marker lives as long as the stream drops repeats.
      this.#kv = await new Kvm(this.#js).create(this.markerBucket, { history: 1, ttl: Math.ceil(this.#stream.duplicateWindowSeconds * 1000) });
    } catch (err) {
      throw new StoreUnavailableError(`nats store ${this.name}: cannot open the marker bucket ${this.markerBucket}: ${errorMessage(err)}`, {}, { cause: err });
    }
  }

  #markers(): KV {
    if (!this.#kv) throw new StoreUnavailableError(`nats store ${this.name}: the marker bucket is not open`);
    return this.#kv;
  }

  #markerKey(key: Uint8Array): string {
    return `${this.name}.${toHex(key)}`;
  }

  #watchStatus(logger: Logger): void {
    void (async () => {
      for await (const status of this.#nc.status()) {
        if (status.type === 'disconnect') logger.warn({ server: status.server }, 'nats connection lost; reconnecting');
        else if (status.type === 'reconnect') logger.info({ server: status.server }, 'nats connection restored');
      }
    })().catch(() => undefined);
  }
}

/** The bytes a message's headers take on the wire (`NATS/1.0\r\n`, `Name: value\r\n` each, `\r\n`). */
function headerBytes(headers: readonly (readonly [string, string])[]): number {
  let bytes = 'NATS/1.0\r\n\r\n'.length;
  for (const [name, value] of headers) bytes += utf8.encode(`${name}: ${value}\r\n`).length;
  return bytes;
}

/** One session's driver: checks and buffers messages, publishes them and writes the marker at commit. */
class NatsDriver implements StoreDriver<NatsChange> {
  readonly #backend: NatsBackend;
  readonly #logger: Logger;
  #messages: OutgoingMessage[] = [];
  /** The session's key, for the exact size of each message's ID. */
  #key: Uint8Array = new Uint8Array();

  constructor(backend: NatsBackend, logger: Logger) {
    this.#backend = backend;
    this.#logger = logger;
  }

  findMarker(key: Uint8Array): Promise<Uint8Array | undefined> {
    return this.#backend.readMarker(key);
  }

  async open(key: Uint8Array): Promise<void> {
    this.#messages = [];
    this.#key = key;
  }

  async apply(change: NatsChange): Promise<void> {
    this.#messages.push(this.#encode(change));
  }

  /** Checks the stream still takes every message, and the marker, before the commit point. */
  async prepare(key: Uint8Array): Promise<void> {
    const stream = await this.#backend.refreshStream().catch((err: unknown) => {
      if (err instanceof NatsStreamError) throw new ChangeRejectedError(err.message);
      throw err;
    });
    this.#messages.forEach((message, index) => {
      if (!stream.subjects.some((pattern) => subjectMatches(pattern, message.subject))) {
        throw new ChangeRejectedError(
          `change ${index + 1}: subject ${JSON.stringify(message.subject)} no longer belongs to stream ${this.#backend.streamName} (subjects ${stream.subjects.join(', ')})`,
          { change: index, subject: message.subject },
        );
      }
    });
    const stored = await this.#backend.readMarker(key);
    if (stored) throw new MarkerExistsError(key, stored);
  }

  async commit(key: Uint8Array, id: Uint8Array): Promise<void> {
    let duplicates = 0;
    for (const [position, message] of this.#messages.entries()) {
      if (await this.#backend.publish(message, messageId(this.#backend.name, key, id, position))) duplicates += 1;
    }
    // A repeat is a roll-forward of a commit that was cut short: the stream kept the first copy.
    if (duplicates > 0) this.#logger.info({ key: describeKey(key), duplicates }, 'nats stream dropped re-published messages as duplicates');
    await this.#backend.createMarker(key, id);
    this.#messages = [];
  }

  async rollback(): Promise<void> {
    this.#messages = [];
  }

  /** The message a change publishes, or the reason it cannot be published (nothing is buffered then). */
  #encode(change: NatsChange): OutgoingMessage {
    const backend = this.#backend;
    const { subject } = change;
    const label = `nats store ${backend.name}: the change to subject ${JSON.stringify(subject)}`;
    const reserved = reservedSubjectRule(subject, backend.markerBucket);
    if (reserved) throw new BookkeepingError(reserved.rule, `${label} would publish to ${reserved.what}, which belongs to commitd or NATS`);
    const problem = publishSubjectProblem(subject);
    if (problem) throw new InvalidNatsChangeError(`${label} cannot be published: ${problem}`);
    const { subjects } = backend.stream;
    if (!subjects.some((pattern) => subjectMatches(pattern, subject))) {
      throw new InvalidNatsChangeError(`${label} is outside stream ${backend.streamName}, whose subjects are ${subjects.join(', ')}`);
    }
    const headers = Object.entries(change.headers ?? {});
    for (const [name, value] of headers) {
      if (name.toLowerCase().startsWith(RESERVED_HEADER_PREFIX)) {
        throw new BookkeepingError('reserved-header', `${label} sets header ${name}: Nats-* headers are the server's (commitd sets Nats-Msg-Id itself)`);
      }
      if (!HEADER_NAME.test(name)) throw new InvalidNatsChangeError(`${label} has an invalid header name ${JSON.stringify(name)}`);
      // NATS ends a header at CR/LF and trims its value: such values would not arrive as sent.
      if (/[\r\n]/.test(value) || value !== value.trim()) {
        throw new InvalidNatsChangeError(
          `${label}: the value of header ${name} contains CR or LF or starts or ends with whitespace, which NATS would not keep`,
        );
      }
    }
    const data = utf8.encode(typeof change.data === 'string' ? change.data : canonicalJson(change.data));
    // Our own headers: Nats-Msg-Id (the store ID has a fixed length) and Nats-Expected-Stream.
    const ours: [string, string][] = [
      ['Nats-Msg-Id', messageId(backend.name, this.#key, new Uint8Array(ID_BYTES), this.#messages.length)],
      ['Nats-Expected-Stream', backend.streamName],
    ];
    const size = data.length + headerBytes([...headers, ...ours]);
    const limit = backend.stream.maxMsgSize > 0 ? Math.min(backend.maxPayload, backend.stream.maxMsgSize) : backend.maxPayload;
    if (size > limit) throw new NatsMessageTooLargeError(`${label} would be a message of ${size} bytes; the server and stream take at most ${limit}`);
    return { subject, data, headers };
  }
}

/**
 * The `Nats-Msg-Id` of the message at `position` (from 0) of a session: the same on every
 * roll-forward of the session, distinct for every other store, key or set of changes.
 */
export function messageId(store: string, key: Uint8Array, id: Uint8Array, position: number): string {
  return `commitd:${store}:${toHex(key)}:${toHex(id)}:${position}`;
}

/** What the `nats` type keeps for itself (DESIGN "The boundary", point 1). */
const NATS_BOOKKEEPING = 'the marker bucket ($KV.<markerBucket>.>), Nats-* headers; subjects $… and _INBOX.… are refused too';

/** The built-in `nats` store type, on nats.js v3 (`@nats-io/transport-node`, `@nats-io/jetstream`, `@nats-io/kv`). */
export const natsStoreType: StoreType<NatsOptions, NatsChange> = {
  type: 'nats',
  bookkeeping: NATS_BOOKKEEPING,
  optionsSchema,
  changeSchema,
  async create(options: NatsOptions, ctx: StoreContext): Promise<Store<NatsChange>> {
    const backend = await NatsBackend.open(options, ctx);
    return {
      name: ctx.name,
      type: 'nats',
      session: () => new HelperCommittable(ctx.name, new NatsDriver(backend, ctx.logger)),
      close: () => backend.close(),
    };
  },
};

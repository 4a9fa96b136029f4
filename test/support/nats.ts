/** A test's own NATS client: creates streams and counts what landed in them. */
import { jetstreamManager, type JetStreamManager, type StoredMsg } from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';

const NANOS_PER_SECOND = 1_000_000_000;

export interface NatsReader {
  readonly nc: NatsConnection;
  readonly jsm: JetStreamManager;
  /** Creates the stream `name` on `subjects`, with a duplicate window of `windowSeconds` (default 1 day). */
  addStream(name: string, subjects: readonly string[], windowSeconds?: number): Promise<void>;
  /** How many messages on `subject` the stream holds. */
  count(stream: string, subject: string): Promise<number>;
  /** Every message of the stream on subjects matching `filter`, in stream order. */
  messages(stream: string, filter: string): Promise<StoredMsg[]>;
  close(): Promise<void>;
}

export async function natsReader(url: string): Promise<NatsReader> {
  const nc = await connect({ servers: url, maxReconnectAttempts: -1, reconnectTimeWait: 200 });
  const jsm = await jetstreamManager(nc, { timeout: 5_000 });
  return {
    nc,
    jsm,
    async addStream(name, subjects, windowSeconds = 86_400) {
      await jsm.streams.add({ name, subjects: [...subjects], duplicate_window: windowSeconds * NANOS_PER_SECOND });
    },
    async count(stream, subject) {
      const info = await jsm.streams.info(stream, { subjects_filter: subject });
      return info.state.subjects?.[subject] ?? 0;
    },
    async messages(stream, filter) {
      const info = await jsm.streams.info(stream);
      const found: StoredMsg[] = [];
      // Bounded by the stream's own size: tests keep streams small.
      for (let seq = info.state.first_seq; seq <= info.state.last_seq && seq > 0; seq++) {
        const message = await jsm.streams.getMessage(stream, { seq });
        if (message && matches(filter, message.subject)) found.push(message);
      }
      return found;
    },
    close: () => nc.close(),
  };
}

function matches(filter: string, subject: string): boolean {
  const want = filter.split('.');
  const have = subject.split('.');
  for (let i = 0; i < want.length; i++) {
    if (want[i] === '>') return have.length > i;
    if (want[i] !== '*' && want[i] !== have[i]) return false;
  }
  return want.length === have.length;
}

/**
 * The embedded KV's thread: it owns the SQLite file through {@link SqliteKv}, so the
 * file's transactions and their fsyncs block this thread, never the event loop. The
 * calls of one message (one turn of the event loop) share a group commit, as writes
 * issued in one turn do in the process.
 * @module
 */
import { parentPort, workerData } from 'node:worker_threads';
import type { KvOp, KvWatch, WriteOptions } from './kv.ts';
import type { KvCall, KvMessage, WireOp, WireWriteOptions } from './sqlite-messages.ts';
import { serializeKvError } from './sqlite-messages.ts';
import { SqliteKv, type SqliteKvOptions } from './sqlite.ts';

const port = parentPort;
if (!port) throw new Error('sqlite-worker.ts runs as a worker thread');

/** Answers and events of one turn leave as one message, as the calls arrived. */
let outbox: KvMessage[] = [];
const post = (message: KvMessage) => {
  if (outbox.length === 0) setImmediate(flush);
  outbox.push(message);
};
const flush = () => {
  const messages = outbox;
  outbox = [];
  port.postMessage(messages);
};

const watches = new Map<number, KvWatch>();
let kv: SqliteKv;
try {
  kv = new SqliteKv(workerData as SqliteKvOptions);
  port.postMessage([{ id: 0 }]);
} catch (err) {
  port.postMessage([{ id: 0, error: serializeKvError(err) }]);
  throw err;
}

/** A lease crosses as its id; the KV reads nothing else of it. */
function writeOptions(options: WireWriteOptions | undefined): WriteOptions | undefined {
  if (options === undefined) return undefined;
  return options.leaseId === undefined ? { ttlSeconds: options.ttlSeconds } : { lease: { id: options.leaseId } as WriteOptions['lease'] };
}

function kvOp(op: WireOp): KvOp {
  return op.type === 'create' || op.type === 'update' ? { ...op, options: writeOptions(op.options) } : op;
}

async function answer(call: KvCall): Promise<unknown> {
  switch (call.method) {
    case 'get':
      return kv.get(call.args[0]);
    case 'list':
      return kv.list(call.args[0]);
    case 'create':
      return kv.create(call.args[0], call.args[1], writeOptions(call.args[2]));
    case 'update':
      return kv.update(call.args[0], call.args[1], call.args[2], writeOptions(call.args[3]));
    case 'delete':
      return kv.delete(call.args[0], call.args[1]);
    case 'txn':
      return kv.txn(call.args[0].map(kvOp));
    case 'grantLease': {
      // The event-loop side keeps the lease alive; here it is only a row.
      const lease = await kv.grantLease(call.args[0]);
      lease.release();
      return lease.id;
    }
    case 'renewLease':
      return kv.renewLease(call.args[0], call.args[1]);
    case 'revokeLease':
      return kv.revokeLease(call.args[0]);
    case 'watch': {
      const [watch, prefix] = call.args;
      const handle = kv.watch(
        prefix,
        (event) => post({ watch, event }),
        (err) => post({ watch, error: serializeKvError(err) }),
      );
      watches.set(watch, handle);
      return undefined;
    }
    case 'unwatch':
      watches.get(call.args[0])?.close();
      watches.delete(call.args[0]);
      return undefined;
    case 'ping':
      return kv.ping();
    case 'close':
      return kv.close();
  }
}

port.on('message', (calls: readonly KvCall[]) => {
  for (const call of calls) {
    answer(call).then(
      (value) => post({ id: call.id, value }),
      (err: unknown) => post({ id: call.id, error: serializeKvError(err) }),
    );
  }
});

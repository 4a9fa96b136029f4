/**
 * The thread that owns one `sqlite` store's database: its connections, write lock and group
 * commit (`database.ts`), and the drivers of the sessions on it (`driver.ts`). The event
 * loop's side, `thread.ts`, calls a driver's methods by message; a statement, a COMMIT or
 * its fsync blocks this thread only.
 * @module
 */
import { parentPort, workerData } from 'node:worker_threads';
import { SqliteDatabase, type SqliteOptions } from './database.ts';
import { SqliteDriver } from './driver.ts';
import { serializeError, type DriverCall, type DriverReply } from './messages.ts';

const port = parentPort;
if (!port) throw new Error('worker.ts runs as a worker thread');

/** Drivers by session, from `open` until `commit` or `rollback`. */
const drivers = new Map<number, SqliteDriver>();
/** Calls not answered yet: `close` answers after them, so each learns its own outcome first. */
const inFlight = new Set<Promise<void>>();

async function serve(db: SqliteDatabase, markers: SqliteDriver, call: DriverCall): Promise<unknown> {
  if (call.method === 'close') {
    db.close();
    await Promise.allSettled(inFlight);
    return undefined;
  }
  // A marker lookup needs no session state: a session skipped on recovery never opens.
  if (call.method === 'findMarker') return markers.findMarker(call.args[0]);
  let driver = drivers.get(call.session);
  if (!driver) {
    driver = new SqliteDriver(db);
    drivers.set(call.session, driver);
  }
  switch (call.method) {
    case 'open':
      return driver.open();
    case 'apply':
      return driver.apply(call.args[0]);
    case 'prepare':
      return driver.prepare(call.args[0], call.args[1]);
    case 'decide':
      return driver.decide();
    case 'commit':
      try {
        return await driver.commit(call.args[0], call.args[1]);
      } finally {
        drivers.delete(call.session);
      }
    case 'rollback':
      try {
        return await driver.rollback();
      } finally {
        drivers.delete(call.session);
      }
  }
}

/** Replies not sent yet: the replies of one turn of this thread's loop leave in one message. */
let outbox: DriverReply[] = [];
function reply(answer: DriverReply): void {
  if (outbox.length === 0) setImmediate(flush);
  outbox.push(answer);
}
function flush(): void {
  const replies = outbox;
  outbox = [];
  port?.postMessage(replies);
}

try {
  const db = await SqliteDatabase.open(workerData as SqliteOptions);
  const markers = new SqliteDriver(db);
  port.on('message', (calls: DriverCall[]) => {
    for (const call of calls) {
      const answered = serve(db, markers, call).then(
        (value) => reply({ id: call.id, value }),
        (err: unknown) => reply({ id: call.id, error: serializeError(err) }),
      );
      if (call.method === 'close') continue;
      inFlight.add(answered);
      void answered.finally(() => inFlight.delete(answered));
    }
  });
  reply({ id: 0, value: 'ready' });
} catch (err) {
  reply({ id: 0, error: serializeError(err) });
}

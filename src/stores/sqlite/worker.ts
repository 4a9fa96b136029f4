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
const inFlight = new Set<Promise<unknown>>();
/**
 * A session's call that wants no answer (`decide`), until the session's next call: that one
 * runs after it and fails with its error — a `rollback` runs either way.
 */
const unanswered = new Map<number, Promise<unknown>>();

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
    case 'openAndPrepare': {
      const stored = await driver.openAndPrepare(call.args[0], call.args[1], call.args[2]);
      // Committed already: nothing was opened, the session ends here.
      if (stored) drivers.delete(call.session);
      return stored;
    }
    case 'savepoint':
      return driver.savepoint();
    case 'rollbackToSavepoint':
      return driver.rollbackToSavepoint();
    case 'releaseSavepoint':
      return driver.releaseSavepoint();
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

try {
  const db = await SqliteDatabase.open(workerData as SqliteOptions);
  const markers = new SqliteDriver(db);
  port.on('message', (call: DriverCall) => {
    const run = () => serve(db, markers, call);
    const earlier = unanswered.get(call.session);
    unanswered.delete(call.session);
    const served = !earlier ? run() : call.method === 'rollback' ? earlier.then(run, run) : earlier.then(run);
    const { id } = call;
    if (id === undefined) unanswered.set(call.session, served);
    const answered =
      id === undefined
        ? served.catch(() => undefined)
        : served.then(
            (value) => port.postMessage({ id, value } satisfies DriverReply),
            (err: unknown) => port.postMessage({ id, error: serializeError(err) } satisfies DriverReply),
          );
    if (call.method === 'close') return;
    inFlight.add(answered);
    void answered.finally(() => inFlight.delete(answered));
  });
  port.postMessage({ id: 0, value: 'ready' } satisfies DriverReply);
} catch (err) {
  port.postMessage({ id: 0, error: serializeError(err) } satisfies DriverReply);
}

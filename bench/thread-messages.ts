/**
 * `npm run bench:threads`: what a message to another thread costs on this machine, the way
 * a sqlite store's calls travel (`src/stores/sqlite/thread.ts`): one call in flight, a
 * message shaped like a driver call, the reply awaited. Three measures, in the same run:
 * - `postMessage` round trip (the store threads' transport), wall and CPU (both threads);
 * - the `postMessage` call alone on the sending thread (what a profile charges to it);
 * - a round trip signalled through shared memory (`Atomics.notify` / `Atomics.waitAsync`),
 *   the transport "Next 3" in docs/performance.md would use.
 * Settings: THREADS_ROUND_TRIPS (20000), THREADS_ROUNDS (3).
 * @module
 */
import { Worker } from 'node:worker_threads';

const roundTrips = Number(process.env.THREADS_ROUND_TRIPS ?? 20_000);
const rounds = Number(process.env.THREADS_ROUNDS ?? 3);
const warmup = 2_000;

// Plain JavaScript, evaluated in the worker: no loader needed there.
const ECHO = `
const { parentPort, workerData } = require('node:worker_threads');
if (workerData.mode === 'post') {
  parentPort.on('message', (call) => parentPort.postMessage({ id: call.id }));
} else {
  const flags = new Int32Array(workerData.shared);
  let seen = 0;
  for (;;) {
    Atomics.wait(flags, 0, seen);
    seen = Atomics.load(flags, 0);
    if (seen < 0) break;
    Atomics.store(flags, 1, seen);
    Atomics.notify(flags, 1);
  }
}`;

interface Measure {
  readonly wallUs: number;
  readonly cpuUs: number;
}

function driverCall(id: number) {
  return { id, session: 1, method: 'commit', args: [new Uint8Array(16), new Uint8Array(16)] };
}

async function measure(run: () => Promise<void>): Promise<Measure> {
  for (let i = 0; i < warmup; i++) await run();
  const cpu = process.cpuUsage();
  const started = performance.now();
  for (let i = 0; i < roundTrips; i++) await run();
  const wallUs = ((performance.now() - started) * 1000) / roundTrips;
  const used = process.cpuUsage(cpu);
  return { wallUs, cpuUs: (used.user + used.system) / roundTrips };
}

async function postMessageRoundTrip(): Promise<{ roundTrip: Measure; callUs: number }> {
  const worker = new Worker(ECHO, { eval: true, workerData: { mode: 'post' } });
  let answered: () => void = () => undefined;
  worker.on('message', () => answered());
  let id = 0;
  let callUs = 0;
  let calls = 0;
  const roundTrip = await measure(async () => {
    const reply = new Promise<void>((resolve) => {
      answered = resolve;
    });
    const before = performance.now();
    worker.postMessage(driverCall(++id));
    callUs += (performance.now() - before) * 1000;
    calls += 1;
    await reply;
  });
  await worker.terminate();
  return { roundTrip, callUs: callUs / calls };
}

/** `Atomics.waitAsync` (Node 16+), which the project's TypeScript lib (ES2022) does not declare. */
const waitAsync = (Atomics as unknown as { waitAsync(array: Int32Array, index: number, value: number): { async: boolean; value: Promise<string> | string } })
  .waitAsync;

async function sharedMemoryRoundTrip(): Promise<Measure> {
  const shared = new SharedArrayBuffer(8);
  const flags = new Int32Array(shared);
  const worker = new Worker(ECHO, { eval: true, workerData: { mode: 'atomics', shared } });
  await new Promise((resolve) => worker.once('online', resolve));
  let sequence = 0;
  const result = await measure(async () => {
    sequence += 1;
    Atomics.store(flags, 0, sequence);
    Atomics.notify(flags, 0);
    for (;;) {
      const seen = Atomics.load(flags, 1);
      if (seen === sequence) return;
      const waited = waitAsync(flags, 1, seen);
      if (waited.async) await waited.value;
    }
  });
  Atomics.store(flags, 0, -1);
  Atomics.notify(flags, 0);
  await worker.terminate();
  return result;
}

const fixed = (value: number) => value.toFixed(1);
for (let round = 1; round <= rounds; round++) {
  const post = await postMessageRoundTrip();
  const atomics = await sharedMemoryRoundTrip();
  process.stdout.write(
    `round ${round}: postMessage round trip ${fixed(post.roundTrip.wallUs)} µs (CPU ${fixed(post.roundTrip.cpuUs)} µs, the call alone ${fixed(post.callUs)} µs) · ` +
      `shared memory round trip ${fixed(atomics.wallUs)} µs (CPU ${fixed(atomics.cpuUs)} µs) · ratio ${fixed(post.roundTrip.wallUs / atomics.wallUs)}\n`,
  );
}

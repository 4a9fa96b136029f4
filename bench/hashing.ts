/**
 * The cost of session-ID hashing: `ChangeHasher.add` (RFC 8785 canonical JSON, then XXH64
 * with seeds 0 and 1 over the line) against xxHash alone over the same bytes, for changes
 * of about 100 B, 10 kB and 1 MB. In-process microbenchmark; throughput in MB/s (10^6
 * bytes) of the canonical line.
 * @module
 */
import xxhash from 'xxhash-wasm';
import { ChangeHasher, canonicalJson } from '../src/core/session-id.ts';
import { changeFor, payloadOf } from './workload.ts';

const xx = await xxhash();

export interface HashingResult {
  readonly payloadBytes: number;
  /** Bytes of the canonical line `jcs(change) "\n"` that is hashed. */
  readonly lineBytes: number;
  /** `new ChangeHasher(); add(change); digest()`: what a store does per change. */
  readonly changeHasherMBps: number;
  /** `canonicalJson(change)` alone. */
  readonly canonicalJsonMBps: number;
  /** One XXH64 (`h64Raw`) over the line's UTF-8 bytes. */
  readonly xxh64MBps: number;
  /** Two XXH64 (seeds 0 and 1), as an ID needs: xxHash's share of the full path. */
  readonly xxh64x2MBps: number;
  /** changeHasher / (2 × xxh64) time: how much more the full path costs than the hash. */
  readonly overheadFactor: number;
}

/** Runs `work` repeatedly for at least `ms`; returns operations per second. */
function opsPerSecond(work: () => void, ms: number): number {
  for (let i = 0; i < 3; i++) work();
  let ops = 0;
  const started = performance.now();
  let elapsed = 0;
  let batch = 1;
  while (elapsed < ms) {
    for (let i = 0; i < batch; i++) work();
    ops += batch;
    elapsed = performance.now() - started;
    if (elapsed < ms / 10) batch *= 2;
  }
  return (ops * 1000) / elapsed;
}

let sink = 0n;

export function benchHashing(payloadSizes: readonly number[], msPerCase: number): HashingResult[] {
  return payloadSizes.map((payloadBytes) => {
    const change = changeFor('bench-key', payloadOf(payloadBytes));
    const line = Buffer.from(`${canonicalJson(change)}\n`);
    const mb = line.length / 1e6;
    const full = opsPerSecond(() => {
      const hasher = new ChangeHasher();
      hasher.add(change);
      sink ^= BigInt(hasher.digest()[0] as number);
    }, msPerCase);
    const canonical = opsPerSecond(() => {
      sink ^= BigInt(canonicalJson(change).length);
    }, msPerCase);
    const single = opsPerSecond(() => {
      sink ^= xx.h64Raw(line, 0n);
    }, msPerCase);
    const double = opsPerSecond(() => {
      sink ^= xx.h64Raw(line, 0n) ^ xx.h64Raw(line, 1n);
    }, msPerCase);
    return {
      payloadBytes,
      lineBytes: line.length,
      changeHasherMBps: full * mb,
      canonicalJsonMBps: canonical * mb,
      xxh64MBps: single * mb,
      xxh64x2MBps: double * mb,
      overheadFactor: double / full,
    };
  });
}

/** Keeps the optimiser from dropping the hashed values. */
export function hashingSink(): bigint {
  return sink;
}

/**
 * Group commit on the coordinator KV, alone: each "session" makes the two KV writes of a
 * one-shot (the commit point: `sessions/<key>` created if `results/<key>` is absent; the
 * result: `results/<key>` created and the record deleted at its revision), with and
 * without grouping (`maxGroup: 1`), on a throwaway etcd (data on disk) and on the
 * embedded KV (on disk). Prints sessions/s, CPU µs per session of this process and, for
 * etcd, the requests sent. `npx tsx bench/kv-group.ts [sessions]`.
 * @module
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cpuUsage } from 'node:process';
import { markdownTable } from 'markdown-table';
import { EtcdKv } from '../src/kv/etcd.ts';
import type { Kv } from '../src/kv/kv.ts';
import { SqliteKv } from '../src/kv/sqlite.ts';
import { startEtcd } from '../test/harness/etcd.ts';

const sessions = Number(process.argv[2] ?? 1500);
const value = 'x'.repeat(600);

async function measure(kv: Kv, concurrency: number, prefix: string): Promise<{ perSecond: number; cpuUs: number }> {
  let next = 0;
  const worker = async () => {
    while (next < sessions) {
      const key = `${prefix}-${next++}`;
      const revision = await kv.txn([
        { type: 'check', key: `results/${key}`, exists: false },
        { type: 'create', key: `sessions/${key}`, value },
      ]);
      await kv.txn([
        { type: 'create', key: `results/${key}`, value, options: { ttlSeconds: 3600 } },
        { type: 'delete', key: `sessions/${key}`, revision },
      ]);
    }
  };
  const cpu = cpuUsage();
  const startedAt = performance.now();
  await Promise.all(Array.from({ length: concurrency }, worker));
  const used = cpuUsage(cpu);
  return { perSecond: Math.round(sessions / ((performance.now() - startedAt) / 1000)), cpuUs: Math.round((used.user + used.system) / sessions) };
}

const etcd = await startEtcd();
const dir = mkdtempSync(join(tmpdir(), 'kv-group-'));
const rows: string[][] = [['KV', 'in flight', 'grouped /s', 'alone /s', 'grouped CPU µs', 'alone CPU µs', 'etcd requests grouped / alone']];
try {
  let opened = 0;
  const open = (backend: 'etcd' | 'embedded', maxGroup: number | undefined, count: () => void): Kv =>
    backend === 'etcd'
      ? new EtcdKv({ endpoints: etcd.endpoints, namespace: `/kv-group-${opened++}/`, maxGroup, onOperation: count })
      : new SqliteKv({ path: join(dir, `kv-${opened++}.db`), maxGroup, onOperation: count });
  for (const backend of ['etcd', 'embedded'] as const) {
    for (const concurrency of [1, 16, 64]) {
      const outcome = [];
      for (const maxGroup of [undefined, 1]) {
        let operations = 0;
        const kv = open(backend, maxGroup, () => operations++);
        try {
          await kv.get('warm-up');
          outcome.push({ ...(await measure(kv, concurrency, `c${concurrency}`)), operations: operations - 1 });
        } finally {
          await kv.close();
        }
      }
      const [grouped, alone] = outcome as [(typeof outcome)[0], (typeof outcome)[0]];
      rows.push([
        backend,
        String(concurrency),
        String(grouped.perSecond),
        String(alone.perSecond),
        String(grouped.cpuUs),
        String(alone.cpuUs),
        backend === 'etcd' ? `${grouped.operations} / ${alone.operations}` : '–',
      ]);
    }
  }
} finally {
  await etcd.cleanup();
  rmSync(dir, { recursive: true, force: true });
}
process.stdout.write(`${sessions} sessions per cell (two KV transactions each)\n\n${markdownTable(rows)}\n`);

/**
 * Prints the tables of docs/performance.md from a results file of `npm run bench`
 * (default `bench/results.json`), as Markdown: the numbers in the docs are copied from
 * one run, never typed. `npm run bench:report [-- path]`.
 * @module
 */
import { readFileSync } from 'node:fs';
import { markdownTable } from 'markdown-table';

interface Cell {
  readonly floor: number;
  readonly commitd: number;
  readonly ratio: number;
  readonly p99: number;
  readonly floorP99: number;
  readonly floorCpuUs: number;
  readonly commitdCpuUs: number;
  readonly errors: number;
  readonly baseline?: { readonly perSecond: number; readonly p99: number; readonly cpuUs: number; readonly ratio: number; readonly vsBaseline: number };
}
interface TwoInstanceCell {
  readonly oneInstance: number;
  readonly twoInstances: number;
  readonly scaling: number;
  readonly oneP99: number;
  readonly twoP99: number;
  readonly oneCpuUs: number;
  readonly twoCpuUs: number;
  readonly errors: number;
}
interface Frame {
  readonly frame: string;
  readonly selfPct: number;
}
interface Results {
  readonly generatedAt: string;
  readonly commit?: string;
  readonly machine: { readonly cpus: number; readonly model: string; readonly loadBefore: unknown; readonly loadAfter: unknown };
  readonly settings: Record<string, unknown>;
  readonly passes: Record<string, { readonly cells: Record<string, Cell> }>;
  readonly twoInstances?: readonly { readonly workload: string; readonly pinned: string; readonly cells: Record<string, TwoInstanceCell> }[];
  readonly rss?: {
    readonly checkpoints: Record<string, { readonly rssMiB: number; readonly heapUsedMiB: number }>;
    readonly growthPct: number;
    readonly afterIdleMiB: number;
  };
  readonly profiles: readonly {
    readonly pass: string;
    readonly concurrency: number;
    readonly perSecond: number;
    readonly busyMs: number;
    readonly totalMs: number;
    /** Absent in results written before they were measured. */
    readonly mainThreadCpuMs?: number;
    readonly allThreadsCpuMs?: number;
    readonly topFrames: readonly Frame[];
    readonly byArea: readonly Frame[];
  }[];
}

const path = process.argv[2] ?? new URL('./results.json', import.meta.url).pathname;
const results = JSON.parse(readFileSync(path, 'utf8')) as Results;
const out = (line = '') => process.stdout.write(`${line}\n`);
const bold = (value: number) => `**${value.toFixed(2)}**`;

out(`Run ${results.generatedAt}${results.commit ? ` at ${results.commit}` : ''}, ${results.machine.cpus} × ${results.machine.model}.`);
out(`Load before: ${JSON.stringify(results.machine.loadBefore)}; after: ${JSON.stringify(results.machine.loadAfter)}.`);
out();

const withBaseline = Object.values(results.passes).some((pass) => Object.values(pass.cells).some((cell) => cell.baseline));
const header = ['pass', 'in flight', 'floor /s', 'commitd /s', 'ratio', 'p99 ms commitd / floor', 'CPU µs/session commitd / floor'];
if (withBaseline) header.push('baseline /s', 'commitd / baseline', 'baseline p99 ms', 'baseline CPU µs');
const rows = Object.entries(results.passes).flatMap(([name, pass]) =>
  Object.entries(pass.cells).map(([concurrency, cell]) => {
    const row = [
      name,
      concurrency,
      String(cell.floor),
      String(cell.commitd),
      bold(cell.ratio),
      `${Math.round(cell.p99)} / ${Math.round(cell.floorP99)}`,
      `${cell.commitdCpuUs} / ${cell.floorCpuUs}`,
    ];
    if (withBaseline) {
      const base = cell.baseline;
      row.push(
        base ? String(base.perSecond) : '–',
        base ? bold(base.vsBaseline) : '–',
        base ? String(Math.round(base.p99)) : '–',
        base ? String(base.cpuUs) : '–',
      );
    }
    return row;
  }),
);
out(markdownTable([header, ...rows], { align: ['l', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r'] }));

// Results of runs before the sqlite two-instance cell held one object, not a list.
for (const pair of [results.twoInstances ?? []].flat()) {
  out();
  out(`Two instances on one etcd, ${pair.workload ?? 'pg+redis'} stores (${pair.pinned}):`);
  out();
  out(
    markdownTable(
      [
        ['in flight', 'one instance /s', 'two instances /s', 'scaling', 'p99 ms one / two', 'CPU µs/session one / two', 'errors'],
        ...Object.entries(pair.cells).map(([concurrency, cell]) => [
          concurrency,
          String(cell.oneInstance),
          String(cell.twoInstances),
          bold(cell.scaling),
          `${Math.round(cell.oneP99)} / ${Math.round(cell.twoP99)}`,
          `${cell.oneCpuUs} / ${cell.twoCpuUs}`,
          String(cell.errors),
        ]),
      ],
      { align: ['r', 'r', 'r', 'r', 'r', 'r', 'r'] },
    ),
  );
}

if (results.rss) {
  const at = Object.entries(results.rss.checkpoints).map(([n, sample]) => `${n} sessions: ${sample.rssMiB} MiB (heap ${sample.heapUsedMiB} MiB)`);
  out();
  out(`Memory (embedded KV, tmpfs): ${at.join('; ')}; growth **${results.rss.growthPct} %**; ${results.rss.afterIdleMiB} MiB after 5 s idle.`);
}

for (const profile of results.profiles) {
  out();
  const cpu =
    profile.mainThreadCpuMs === undefined ? '' : `; CPU ${profile.mainThreadCpuMs} ms on the main thread, ${profile.allThreadsCpuMs} ms on all threads`;
  out(
    `Profile ${profile.pass}, ${profile.concurrency} in flight (${profile.perSecond}/s; main thread busy ${profile.busyMs} of ${profile.totalMs} ms${cpu}), self time:`,
  );
  out();
  const top = profile.topFrames.slice(0, 8).map((frame) => `${frame.selfPct.toFixed(1)} % ${frame.frame}`);
  const areas = profile.byArea.slice(0, 8).map((area) => `${area.selfPct.toFixed(1)} % ${area.frame}`);
  out(`- top frames: ${top.join(' · ')}`);
  out(`- by area: ${areas.join(' · ')}`);
}

/**
 * Summarises a V8 CPU profile (`node --cpu-prof`): the frames with the most self time, and
 * self time grouped by where the code lives (commitd's own files, each package, Node's
 * internals, the garbage collector, idle).
 * @module
 */
import { readFileSync } from 'node:fs';

interface CallFrame {
  readonly functionName: string;
  readonly url: string;
  readonly lineNumber: number;
}

interface ProfileNode {
  readonly id: number;
  readonly callFrame: CallFrame;
  readonly children?: readonly number[];
}

interface CpuProfile {
  readonly nodes: readonly ProfileNode[];
  readonly startTime: number;
  readonly endTime: number;
  readonly samples: readonly number[];
  readonly timeDeltas: readonly number[];
}

export interface FrameShare {
  readonly frame: string;
  readonly selfMs: number;
  /** Share of the busy (non-idle) time. */
  readonly selfPct: number;
}

export interface ProfileSummary {
  readonly totalMs: number;
  readonly idleMs: number;
  readonly busyMs: number;
  readonly topFrames: readonly FrameShare[];
  readonly byArea: readonly FrameShare[];
  /** commitd's own functions (`src/`) by inclusive time: self plus everything they call. */
  readonly ownInclusive: readonly FrameShare[];
}

/** Where a frame's code lives: `src/…`, a package, `node:internal`, or a V8 pseudo-frame. */
function areaOf(frame: CallFrame): string {
  const url = frame.url;
  if (!url) return frame.functionName.startsWith('(') ? frame.functionName : '(native)';
  const pkg = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (pkg) return pkg[1] as string;
  if (url.startsWith('node:')) return 'node internals';
  const own = /\/(src|test|bench)\/(.+)$/.exec(url);
  if (own) return `${own[1]}/${own[2]?.split('/')[0]}`;
  return url;
}

/** commitd's own source, not a dependency's `src/`. */
function isOwn(url: string): boolean {
  return url.includes('/src/') && !url.includes('/node_modules/');
}

function describe(frame: CallFrame): string {
  const url = frame.url;
  const name = frame.functionName || '(anonymous)';
  if (!url) return name;
  const path = url.replace(/^file:\/\//, '');
  const short = path.includes('/node_modules/') ? path.replace(/^.*\/node_modules\//, '') : path.replace(/^.*\/(src|test|bench)\//, '$1/');
  // Line numbers of TypeScript files are those of tsx's output, not of the source: leave them out.
  return short.endsWith('.ts') ? `${name} ${short}` : `${name} ${short}:${frame.lineNumber + 1}`;
}

function ranked(totals: Map<string, number>, busyMs: number, limit: number): FrameShare[] {
  return [...totals]
    .sort((a, b) => b[1] - a[1])
    .slice(0, limit)
    .map(([frame, ms]) => ({ frame, selfMs: Math.round(ms), selfPct: Math.round((1000 * ms) / busyMs) / 10 }));
}

/** Which samples count: those taken between these CLOCK_MONOTONIC times in µs (V8's clock). */
export interface ProfileWindow {
  readonly fromUs: number;
  readonly toUs: number;
}

/** Now on V8's profile clock (CLOCK_MONOTONIC on Linux, as `process.hrtime`), in µs. */
export function profileClockUs(): number {
  return Number(process.hrtime.bigint() / 1000n);
}

/**
 * Summarises the samples inside `window` (all when absent): start-up, module loading
 * and shutdown fall outside the load and would otherwise crowd the top frames.
 */
export function summariseProfile(path: string, window?: ProfileWindow, limit = 15): ProfileSummary {
  const profile = JSON.parse(readFileSync(path, 'utf8')) as CpuProfile;
  const byId = new Map(profile.nodes.map((node) => [node.id, node]));
  const selfUs = new Map<number, number>();
  let at = profile.startTime;
  profile.samples.forEach((id, i) => {
    const delta = profile.timeDeltas[i] ?? 0;
    at += delta;
    if (window && (at < window.fromUs || at > window.toUs)) return;
    selfUs.set(id, (selfUs.get(id) ?? 0) + delta);
  });
  const frames = new Map<string, number>();
  const areas = new Map<string, number>();
  let idleMs = 0;
  let totalMs = 0;
  for (const [id, us] of selfUs) {
    const node = byId.get(id);
    if (!node) continue;
    const ms = us / 1000;
    totalMs += ms;
    if (node.callFrame.functionName === '(idle)') {
      idleMs += ms;
      continue;
    }
    const frame = describe(node.callFrame);
    frames.set(frame, (frames.get(frame) ?? 0) + ms);
    const area = areaOf(node.callFrame);
    areas.set(area, (areas.get(area) ?? 0) + ms);
  }
  const busyMs = totalMs - idleMs;
  // Inclusive time of src/ frames, each counted once per stack even when recursive.
  const inclusive = new Map<string, number>();
  const root = profile.nodes[0];
  const walk = (node: ProfileNode, onStack: Set<string>): number => {
    let us = selfUs.get(node.id) ?? 0;
    const frame = describe(node.callFrame);
    const own = isOwn(node.callFrame.url) && !onStack.has(frame);
    if (own) onStack.add(frame);
    for (const child of node.children ?? []) {
      const next = byId.get(child);
      if (next) us += walk(next, onStack);
    }
    if (own) {
      onStack.delete(frame);
      inclusive.set(frame, (inclusive.get(frame) ?? 0) + us / 1000);
    }
    return us;
  };
  if (root) walk(root, new Set());
  return {
    totalMs: Math.round(totalMs),
    idleMs: Math.round(idleMs),
    busyMs: Math.round(busyMs),
    topFrames: ranked(frames, busyMs, limit),
    byArea: ranked(areas, busyMs, limit),
    ownInclusive: ranked(inclusive, busyMs, limit * 2),
  };
}

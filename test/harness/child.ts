import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { readdir, readFile, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export type StreamName = 'stdout' | 'stderr';

interface OutputLine {
  stream: StreamName;
  line: string;
}

export interface SpawnTrackedOptions {
  /** Used in error messages. Defaults to the command's basename. */
  name?: string;
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  uid?: number;
  gid?: number;
  /**
   * Run in its own process group (default true), so SIGKILL/SIGSTOP/SIGCONT
   * also reach worker processes such as PostgreSQL backends.
   */
  group?: boolean;
  stdin?: 'ignore' | 'pipe';
  /** How many output lines to remember (default 500). */
  tailLines?: number;
}

export interface WaitForLineOptions {
  timeoutMs?: number;
  stream?: StreamName | 'both';
}

export interface WaitReadyOptions {
  timeoutMs: number;
  intervalMs?: number;
  /** What is being waited for, for the error message, e.g. "etcd /health". */
  what: string;
}

const UNCATCHABLE: ReadonlySet<NodeJS.Signals> = new Set(['SIGKILL', 'SIGSTOP', 'SIGCONT']);

// Last-resort cleanup: a failing test must never leak servers or temp dirs.
const liveProcesses = new Set<TrackedProcess>();
const liveTempDirs = new Set<string>();
let exitHooksInstalled = false;

function cleanupEverythingSync(): void {
  for (const proc of liveProcesses) proc.signal('SIGKILL');
  liveProcesses.clear();
  for (const dir of liveTempDirs) rmSync(dir, { recursive: true, force: true });
  liveTempDirs.clear();
}

function onFatalSignal(signal: NodeJS.Signals): void {
  cleanupEverythingSync();
  process.removeListener(signal, onFatalSignal);
  // Keep the default "die by signal" behaviour unless someone else handles it.
  if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
}

function installExitHooks(): void {
  if (exitHooksInstalled) return;
  exitHooksInstalled = true;
  process.on('exit', cleanupEverythingSync);
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(signal, onFatalSignal);
}

/** A child process whose output is remembered and which is killed when this process exits. */
export class TrackedProcess {
  readonly name: string;
  readonly pid: number;
  readonly child: ChildProcess;
  readonly exited: Promise<ExitInfo>;
  /** Resolves once the process exited and its output pipes are drained. */
  private readonly closed: Promise<void>;
  private exitInfo: ExitInfo | undefined;
  private isPaused = false;
  private readonly group: boolean;
  private readonly tail: OutputLine[] = [];
  private readonly tailLimit: number;
  private readonly lineListeners = new Set<(entry: OutputLine) => void>();

  constructor(child: ChildProcess, name: string, group: boolean, tailLimit: number) {
    if (child.pid === undefined) throw new Error(`${name}: process has no pid`);
    this.child = child;
    this.name = name;
    this.pid = child.pid;
    this.group = group;
    this.tailLimit = tailLimit;
    this.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        this.exitInfo = { code, signal };
        liveProcesses.delete(this);
        resolve(this.exitInfo);
      });
    });
    this.closed = new Promise((resolve) => child.once('close', () => resolve()));
    if (child.stdout) this.collect(child.stdout, 'stdout');
    if (child.stderr) this.collect(child.stderr, 'stderr');
    // A forgotten server must not keep the test process alive: the exit hook kills it instead.
    // Waiting on it still works because every wait holds its own (ref'ed) timer.
    child.unref();
    for (const stream of [child.stdin, child.stdout, child.stderr]) {
      if (stream instanceof net.Socket) stream.unref();
    }
    installExitHooks();
    liveProcesses.add(this);
  }

  get running(): boolean {
    return this.exitInfo === undefined;
  }

  get paused(): boolean {
    return this.isPaused;
  }

  /** The remembered output (stdout and stderr interleaved), last `lines` lines. */
  output(lines = this.tailLimit): string {
    return this.tail
      .slice(-lines)
      .map((entry) => entry.line)
      .join('\n');
  }

  /**
   * Sends a signal; a process that is already gone is ignored. Uncatchable
   * signals (crash, freeze) hit the whole group; catchable ones go to the leader
   * only, because they are its shutdown protocol (PostgreSQL workers, say,
   * treat SIGINT differently from the postmaster).
   */
  signal(signal: NodeJS.Signals): void {
    const wholeGroup = this.group && UNCATCHABLE.has(signal);
    try {
      process.kill(wholeGroup ? -this.pid : this.pid, signal);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
    }
  }

  pause(): void {
    this.signal('SIGSTOP');
    this.isPaused = true;
  }

  resume(): void {
    this.signal('SIGCONT');
    this.isPaused = false;
  }

  async waitForExit(timeoutMs = 10_000): Promise<ExitInfo> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), timeoutMs);
    });
    try {
      const result = await Promise.race([this.exited, timeout]);
      if (result === 'timeout') throw this.failure(`did not exit within ${timeoutMs} ms`);
      return result;
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Sends `signal` (default SIGKILL) and waits for the process to exit and, for a group, for
   * every other member to be gone too: a SIGKILLed postmaster exits before its backends, and
   * a PostgreSQL started while one of them still holds the old shared memory refuses to run.
   */
  async kill(signal: NodeJS.Signals = 'SIGKILL', timeoutMs = 10_000): Promise<ExitInfo> {
    if (!this.running) return this.exited;
    const deadline = Date.now() + timeoutMs;
    this.signal(signal);
    // A stopped process only acts on a catchable signal once it is continued.
    if (this.isPaused) this.resume();
    const exit = await this.waitForExit(timeoutMs);
    if (this.group) await this.waitForGroupGone(deadline);
    return exit;
  }

  private async waitForGroupGone(deadline: number): Promise<void> {
    for (;;) {
      const left = await liveGroupMembers(this.pid);
      if (left.length === 0) return;
      if (Date.now() >= deadline) throw this.failure(`process group still has live members ${left.join(', ')} after the leader exited`);
      // Members that outlive a SIGKILLed leader are already dying; re-send in case one was not.
      if (this.exitInfo?.signal === 'SIGKILL') this.signal('SIGKILL');
      await sleep(10);
    }
  }

  /** Graceful stop: `signal` (default SIGTERM), then SIGKILL if it takes longer than `graceMs`. */
  async stop(signal: NodeJS.Signals = 'SIGTERM', graceMs = 10_000): Promise<ExitInfo> {
    try {
      return await this.kill(signal, graceMs);
    } catch {
      return this.kill('SIGKILL');
    }
  }

  /** Resolves with the first line (already printed or future) matching `pattern`. */
  waitForLine(pattern: RegExp, opts: WaitForLineOptions = {}): Promise<RegExpMatchArray> {
    const { timeoutMs = 10_000, stream = 'stdout' } = opts;
    const matches = (entry: OutputLine): RegExpMatchArray | null => (stream === 'both' || entry.stream === stream ? entry.line.match(pattern) : null);
    for (const entry of this.tail) {
      const match = matches(entry);
      if (match) return Promise.resolve(match);
    }
    return new Promise((resolve, reject) => {
      const finish = (): void => {
        clearTimeout(timer);
        this.lineListeners.delete(listener);
      };
      const listener = (entry: OutputLine): void => {
        const match = matches(entry);
        if (!match) return;
        finish();
        resolve(match);
      };
      const timer = setTimeout(() => {
        finish();
        reject(this.failure(`no ${stream} line matching ${pattern} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.lineListeners.add(listener);
      void this.closed.then(() => {
        if (!this.lineListeners.has(listener)) return;
        finish();
        reject(this.failure(`exited (${describeExit(this.exitInfo!)}) before printing a line matching ${pattern}`));
      });
    });
  }

  /** Polls `probe` until it returns true; fails early, with the output tail, if the process exits. */
  async waitReady(probe: () => Promise<boolean>, opts: WaitReadyOptions): Promise<void> {
    const { timeoutMs, intervalMs = 100, what } = opts;
    const deadline = Date.now() + timeoutMs;
    let lastError = '';
    while (Date.now() < deadline) {
      if (!this.running) {
        // Let the last output (usually the reason) drain before quoting it.
        await Promise.race([this.closed, sleep(1_000)]);
        throw this.failure(`exited (${describeExit(this.exitInfo!)}) while waiting for ${what}`);
      }
      try {
        if (await probe()) return;
      } catch (err) {
        lastError = err instanceof Error ? err.message : String(err);
      }
      await sleep(intervalMs);
    }
    const detail = lastError ? ` (last error: ${lastError})` : '';
    throw this.failure(`not ready: ${what} did not succeed within ${timeoutMs} ms${detail}`);
  }

  /** An Error naming the process and carrying its recent output. */
  failure(message: string, lines = 30): Error {
    const output = this.output(lines);
    return new Error(`${this.name} (pid ${this.pid}): ${message}${output ? `\n--- last output ---\n${output}` : ''}`);
  }

  private collect(stream: NodeJS.ReadableStream, name: StreamName): void {
    let partial = '';
    stream.setEncoding('utf8');
    stream.on('data', (chunk: string) => {
      const pieces = (partial + chunk).split('\n');
      partial = pieces.pop() ?? '';
      for (const line of pieces) this.record({ stream: name, line });
    });
    stream.on('end', () => {
      if (partial) this.record({ stream: name, line: partial });
      partial = '';
    });
  }

  private record(entry: OutputLine): void {
    this.tail.push(entry);
    if (this.tail.length > this.tailLimit) this.tail.splice(0, this.tail.length - this.tailLimit);
    for (const listener of this.lineListeners) listener(entry);
  }
}

/** Pids of the live (not zombie) processes in process group `pgid`, read from /proc. */
async function liveGroupMembers(pgid: number): Promise<number[]> {
  const members: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let stat: string;
    try {
      stat = await readFile(`/proc/${entry}/stat`, 'utf8');
    } catch {
      continue; // exited while we looked
    }
    // pid (comm) state ppid pgrp ...; comm may hold spaces and parentheses.
    const [state, , pgrp] = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (Number(pgrp) === pgid && state !== 'Z' && state !== 'X') members.push(Number(entry));
  }
  return members;
}

function describeExit(info: ExitInfo): string {
  return info.signal ? `signal ${info.signal}` : `code ${info.code}`;
}

/** Spawns `command` with piped output, registered for last-resort cleanup. Rejects if it cannot start. */
export function spawnTracked(command: string, args: readonly string[], opts: SpawnTrackedOptions = {}): Promise<TrackedProcess> {
  const group = opts.group ?? true;
  const name = opts.name ?? path.basename(command);
  const child = spawn(command, args, {
    cwd: opts.cwd,
    env: opts.env ?? process.env,
    uid: opts.uid,
    gid: opts.gid,
    detached: group,
    stdio: [opts.stdin ?? 'ignore', 'pipe', 'pipe'],
  });
  return new Promise((resolve, reject) => {
    child.on('error', (err) => reject(new Error(`${name}: cannot start ${command}: ${err.message}`)));
    child.once('spawn', () => resolve(new TrackedProcess(child, name, group, opts.tailLines ?? 500)));
  });
}

/** Runs a TypeScript file in a fresh node process through tsx (for crash tests). */
export function spawnTsx(file: string, args: readonly string[] = [], opts: SpawnTrackedOptions = {}): Promise<TrackedProcess> {
  return spawnTracked(process.execPath, ['--import', 'tsx', file, ...args], {
    name: path.basename(file),
    tailLines: 10_000,
    ...opts,
  });
}

/** A fresh directory under the OS temp dir, removed at exit if nobody removed it before. */
export function makeTempDir(label: string): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), `commitd-${label}-`));
  installExitHooks();
  liveTempDirs.add(dir);
  return dir;
}

export async function removeTempDir(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true });
  liveTempDirs.delete(dir);
}

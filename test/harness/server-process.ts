import { removeTempDir, type TrackedProcess } from './child.ts';

/** What a test can do with any throwaway server. */
export interface ManagedServer {
  readonly dataDir: string;
  readonly running: boolean;
  /** Recent stdout/stderr of the current (or last) process. */
  output(): string;
  /** Graceful shutdown, then wait for exit. */
  stop(): Promise<void>;
  /** Default SIGKILL, to the whole process group. */
  kill(signal?: NodeJS.Signals): Promise<void>;
  pause(): void;
  resume(): void;
  /** Starts again on the same ports and data dir and waits until it serves. */
  restart(): Promise<void>;
  /** Kills the process if running and removes its temp dir. */
  cleanup(): Promise<void>;
}

/**
 * What every throwaway server (etcd, PostgreSQL, Redis) shares: one tracked process at a
 * time, its output kept after it exits, signals, restart on the same data, and cleanup of
 * its temp dir. Subclasses say how to start and how to stop gracefully.
 */
export abstract class ServerProcess {
  protected proc: TrackedProcess | undefined;
  private lastOutput = '';

  constructor(
    /** For messages, e.g. `etcd m1`. */
    protected readonly label: string,
    /** The temp dir removed by `cleanup`. */
    private readonly workDir: string,
    private readonly stopSignal: NodeJS.Signals = 'SIGTERM',
    private readonly stopGraceMs?: number,
  ) {}

  /** Starts the process and waits until it serves. */
  abstract start(): Promise<void>;

  get running(): boolean {
    return this.proc?.running ?? false;
  }

  output(): string {
    return this.proc?.output() ?? this.lastOutput;
  }

  async stop(): Promise<void> {
    if (this.proc) await this.proc.stop(this.stopSignal, this.stopGraceMs);
    this.rememberOutput();
  }

  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    if (this.proc) await this.proc.kill(signal);
    this.rememberOutput();
  }

  pause(): void {
    this.requireProcess().pause();
  }

  resume(): void {
    this.requireProcess().resume();
  }

  async restart(): Promise<void> {
    if (this.running) await this.stop();
    await this.start();
  }

  async cleanup(): Promise<void> {
    await this.kill('SIGKILL');
    await removeTempDir(this.workDir);
  }

  protected requireProcess(): TrackedProcess {
    if (!this.proc?.running) throw new Error(`${this.label} is not running`);
    return this.proc;
  }

  private rememberOutput(): void {
    if (this.proc) this.lastOutput = this.proc.output();
  }
}

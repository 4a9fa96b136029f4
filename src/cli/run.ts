/**
 * `commitd` from argv to exit code: parse, run, print, and turn every failure into one
 * line on stderr and its exit code.
 * @module
 */
import { CommitdApiError, CommitdClient, CommitdNetworkError, CommitdProtocolError } from '@commitd/client';
import { USAGE, UsageError, parseInvocation } from './args.ts';
import { CommandError, execute } from './commands.ts';

/** 0 ok · 1 the server refused (or a command's aim was not met) · 2 wrong usage · 3 commitd unreachable. */
export const EXIT = { ok: 0, api: 1, usage: 2, unreachable: 3 } as const;

/** Where `run` reads and writes; the process's own by default. */
export interface CliIo {
  readonly env: Readonly<Record<string, string | undefined>>;
  readonly stdout: (text: string) => void;
  readonly stderr: (text: string) => void;
  /** Starts the server (`commitd serve`). */
  readonly serve: () => Promise<void>;
}

/**
 * Operator commands retry briefly: enough to ride out a blip, short enough that a person
 * (or a script) hears "unreachable" within seconds.
 */
const CLI_RETRY = { maxAttempts: 3, maxElapsedMs: 5_000 } as const;

function failure(error: unknown): { line: string; code: number } {
  if (error instanceof UsageError) return { line: `usage: ${error.message} (see commitd --help)`, code: EXIT.usage };
  if (error instanceof CommitdApiError) return { line: `${error.code}: ${error.detail}`, code: EXIT.api };
  if (error instanceof CommandError) return { line: `${error.code}: ${error.detail}`, code: EXIT.api };
  if (error instanceof CommitdNetworkError) return { line: `unreachable: ${error.message}`, code: EXIT.unreachable };
  if (error instanceof CommitdProtocolError) return { line: `protocol: ${error.message}`, code: EXIT.api };
  throw error;
}

const oneLine = (text: string): string => text.replace(/\s*\n\s*/g, ' ');

/** Runs `commitd` with `argv` (without node and the script) and returns the exit code. */
export async function run(argv: readonly string[], io: CliIo): Promise<number> {
  try {
    const { command, url, token, json } = parseInvocation(argv, io.env);
    if (command.name === 'help') {
      io.stdout(USAGE);
      return EXIT.ok;
    }
    if (command.name === 'serve') {
      await io.serve();
      return EXIT.ok;
    }
    const client = new CommitdClient({ url, token, retry: CLI_RETRY, requestTimeoutMs: 10_000 });
    const output = await execute(command, client);
    io.stdout(json ? JSON.stringify(output.json, null, 2) : output.text);
    return output.exitCode;
  } catch (error) {
    const { line, code } = failure(error);
    io.stderr(`commitd: ${oneLine(line)}`);
    return code;
  }
}

/**
 * `commitd` from argv to exit code: parse, run, print, and turn every failure into one
 * line on stderr and its exit code.
 * @module
 */
import { CommitdApiError, CommitdClient, CommitdNetworkError, CommitdProtocolError } from '@commitd/client';
import { UsageError, parseInvocation } from './args.ts';
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

/** A failure as one line for people, and as a JSON document for `--json` (a server's problem as it came). */
interface Failure {
  readonly line: string;
  readonly json: Readonly<Record<string, unknown>>;
  readonly code: number;
}

function failure(error: unknown): Failure {
  const local = (code: string, detail: string, exit: number): Failure => ({ line: `${code}: ${detail}`, json: { code, detail }, code: exit });
  if (error instanceof UsageError) return { ...local('usage', error.message, EXIT.usage), line: `usage: ${error.message} (see commitd --help)` };
  if (error instanceof CommitdApiError) return { line: `${error.code}: ${error.detail}`, json: error.problem, code: EXIT.api };
  if (error instanceof CommandError) return local(error.code, error.detail, EXIT.api);
  if (error instanceof CommitdNetworkError) return local('unreachable', error.message, EXIT.unreachable);
  if (error instanceof CommitdProtocolError)
    return { ...local('protocol', error.message, EXIT.api), json: { code: 'protocol', detail: error.message, status: error.status } };
  throw error;
}

const oneLine = (text: string): string => text.replace(/\s*\n\s*/g, ' ');

/** Runs `commitd` with `argv` (without node and the script) and returns the exit code. */
export async function run(argv: readonly string[], io: CliIo): Promise<number> {
  // Known before parsing, so that even a usage error comes out as JSON when asked for.
  let json = argv.includes('--json');
  try {
    const invocation = parseInvocation(argv, io.env);
    const { command, url, token } = invocation;
    json = invocation.json;
    if (command.name === 'help') {
      io.stdout(command.text);
      return EXIT.ok;
    }
    if (command.name === 'serve') {
      await io.serve();
      return EXIT.ok;
    }
    const client = new CommitdClient({ url, token, retry: CLI_RETRY, requestTimeoutMs: 10_000 });
    // Progress is for people: under --json stdout carries the result and stderr only an error.
    const output = await execute(command, client, json ? undefined : io.stderr);
    io.stdout(json ? JSON.stringify(output.json, null, 2) : output.text);
    return output.exitCode;
  } catch (error) {
    const { line, json: document, code } = failure(error);
    io.stderr(json ? JSON.stringify(document) : `commitd: ${oneLine(line)}`);
    return code;
  }
}

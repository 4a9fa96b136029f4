/**
 * The `commitd` command line: argv → one typed invocation, or a `UsageError` naming what
 * is wrong. Pure: the environment comes in as a parameter.
 * @module
 */
import { parseArgs } from 'node:util';
import type { ListableState } from '@commitd/client';

/** Default server when neither `--url` nor `COMMITD_URL` says otherwise (the server's own default). */
export const DEFAULT_URL = 'http://127.0.0.1:8080';

const LISTABLE_STATES: readonly ListableState[] = ['active', 'committing', 'failed'];

/** What to do. */
export type Command =
  | { readonly name: 'help' }
  | { readonly name: 'serve' }
  | { readonly name: 'sessions list'; readonly state?: ListableState }
  | { readonly name: 'sessions show'; readonly key: string }
  | { readonly name: 'sessions cancel'; readonly key: string }
  | { readonly name: 'stores list' }
  | { readonly name: 'recover' };

/** A command with the global options. */
export interface Invocation {
  readonly command: Command;
  readonly url: string;
  readonly token: string | undefined;
  /** Machine-readable output on stdout instead of tables. */
  readonly json: boolean;
}

/** The command line is wrong; exit code 2. */
export class UsageError extends Error {}

export const USAGE = `Usage: commitd <command> [options]

Commands:
  serve                                   run the commitd server (configured by COMMITD_* and COMMITD_CONFIG)
  sessions list [--state active|committing|failed]
                                          open and failed sessions
  sessions show <key>                     one session's state
  sessions cancel <key>                   cancel an open session
  stores list                             the configured stores
  recover --once                          retry every failed session once; exit 1 if any still fails

Options:
  --url <url>      commitd to talk to (default: $COMMITD_URL or ${DEFAULT_URL})
  --token <token>  bearer token (default: $COMMITD_TOKEN)
  --json           JSON on stdout, for scripts
  -h, --help       this text

Exit codes: 0 ok, 1 the server refused (one line on stderr: commitd: <code>: <detail>),
2 wrong usage, 3 commitd unreachable.`;

const OPTIONS = {
  url: { type: 'string' },
  token: { type: 'string' },
  json: { type: 'boolean', default: false },
  state: { type: 'string' },
  once: { type: 'boolean', default: false },
  help: { type: 'boolean', short: 'h', default: false },
} as const;

function parseCommand(positionals: readonly string[], state: string | undefined, once: boolean): Command {
  const [group, action, ...rest] = positionals;
  if (group === undefined) throw new UsageError('no command given');
  const words = action === undefined ? group : `${group} ${action}`;
  const onlyWith = (option: string, allowed: boolean): void => {
    if (!allowed) throw new UsageError(`${option} does not apply to "${words}"`);
  };
  const needKey = (): string => {
    const [key, ...extra] = rest;
    if (key === undefined || key === '') throw new UsageError(`"${words}" needs a session key`);
    if (extra.length > 0) throw new UsageError(`unexpected argument "${extra[0]}"`);
    return key;
  };
  const noMore = (args: readonly string[]): void => {
    if (args.length > 0) throw new UsageError(`unexpected argument "${args[0]}"`);
  };
  onlyWith('--state', state === undefined || words === 'sessions list');
  onlyWith('--once', !once || group === 'recover');

  switch (group) {
    case 'serve':
      noMore(positionals.slice(1));
      return { name: 'serve' };
    case 'recover':
      noMore(positionals.slice(1));
      // Only one pass exists here: the server itself recovers periodically.
      if (!once) throw new UsageError('recover runs one pass: pass --once');
      return { name: 'recover' };
    case 'stores':
      if (action !== 'list') throw new UsageError(`unknown command "${words}" (stores: list)`);
      noMore(rest);
      return { name: 'stores list' };
    case 'sessions':
      switch (action) {
        case 'list': {
          noMore(rest);
          if (state === undefined) return { name: 'sessions list' };
          if (!(LISTABLE_STATES as readonly string[]).includes(state)) throw new UsageError(`--state must be one of ${LISTABLE_STATES.join(', ')}`);
          return { name: 'sessions list', state: state as ListableState };
        }
        case 'show':
          return { name: 'sessions show', key: needKey() };
        case 'cancel':
          return { name: 'sessions cancel', key: needKey() };
        default:
          throw new UsageError(`unknown command "${words}" (sessions: list, show, cancel)`);
      }
    default:
      throw new UsageError(`unknown command "${group}"`);
  }
}

/** `argv` as node's parseArgs reads it; its errors become one-line usage errors. */
function parseArguments(argv: readonly string[]) {
  try {
    return parseArgs({ args: [...argv], options: OPTIONS, allowPositionals: true, strict: true });
  } catch (error) {
    // Keep parseArgs's first sentence ("Unknown option '--x'"); its advice on `--` would only confuse here.
    const message = error instanceof Error ? error.message : String(error);
    throw new UsageError((message.split(/\.\s/)[0] ?? message).replace(/\.$/, ''));
  }
}

/** Parses `argv` (without node and the script); `env` supplies `COMMITD_URL` and `COMMITD_TOKEN`. */
export function parseInvocation(argv: readonly string[], env: Readonly<Record<string, string | undefined>>): Invocation {
  const { values, positionals } = parseArguments(argv);
  const url = values.url ?? (env.COMMITD_URL || DEFAULT_URL);
  if (!URL.canParse(url) || !/^https?:$/.test(new URL(url).protocol)) throw new UsageError(`--url must be an http(s) URL, not ${JSON.stringify(url)}`);
  const token = values.token ?? (env.COMMITD_TOKEN || undefined);
  const command: Command = values.help ? { name: 'help' } : parseCommand(positionals, values.state, values.once);
  return { command, url, token, json: values.json };
}

/**
 * The `commitd` command line, parsed by commander: argv → one typed invocation, or a
 * `UsageError` naming what is wrong. Pure: the environment comes in as a parameter, and
 * commander's own output (help, version, errors) is captured rather than printed.
 * @module
 */
import { readFileSync } from 'node:fs';
import { Argument, Command as Program, CommanderError, InvalidArgumentError, Option } from 'commander';

/** Default server when neither `--url` nor `COMMITD_URL` says otherwise (the server's own default). */
export const DEFAULT_URL = 'http://127.0.0.1:8080';

/** States `sessions list --state` takes (DESIGN.md "HTTP API v1": committed and abandoned from history). */
export const LISTABLE_STATES = ['active', 'committing', 'failed', 'committed', 'abandoned'] as const;
export type ListState = (typeof LISTABLE_STATES)[number];

/** The most sessions one page may hold (the server's cap). */
export const MAX_LIMIT = 1000;

/** commitd's version, from package.json. */
export const VERSION: string = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

/** What to do. */
export type Command =
  | { readonly name: 'help'; readonly text: string }
  | { readonly name: 'serve' }
  | { readonly name: 'sessions list'; readonly state?: ListState; readonly limit?: number; readonly cursor?: string }
  | { readonly name: 'sessions show'; readonly key: string }
  | { readonly name: 'sessions cancel'; readonly key: string }
  | { readonly name: 'sessions resolve'; readonly key: string; readonly action: 'retry' | 'abandon' }
  | { readonly name: 'stores list' }
  | { readonly name: 'stores add'; readonly store: string; readonly type: string; readonly options: Readonly<Record<string, unknown>> }
  | { readonly name: 'stores remove'; readonly store: string }
  | { readonly name: 'recover' };

/** A command with the global options. */
export interface Invocation {
  readonly command: Command;
  readonly url: string;
  readonly token: string | undefined;
  /** Machine-readable output on stdout (and errors as JSON on stderr) instead of tables. */
  readonly json: boolean;
}

/** The command line is wrong; exit code 2. */
export class UsageError extends Error {}

const EPILOG = `
Environment: COMMITD_URL and COMMITD_TOKEN stand in for --url and --token.
Exit codes: 0 ok, 1 the server refused (one line on stderr: commitd: <code>: <detail>;
with --json the problem document as JSON), 2 wrong usage, 3 commitd unreachable.`;

function positiveLimit(value: string): number {
  const limit = Number(value);
  if (!/^\d+$/.test(value) || limit < 1 || limit > MAX_LIMIT) throw new InvalidArgumentError(`a whole number from 1 to ${MAX_LIMIT}`);
  return limit;
}

function optionsObject(value: string): Record<string, unknown> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(value);
  } catch {
    throw new InvalidArgumentError('a JSON object, e.g. \'{"path":"./data/audit.db"}\'');
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new InvalidArgumentError('a JSON object');
  return parsed as Record<string, unknown>;
}

/** The program; each action records its command in `chosen`. */
function program(chosen: (command: Command) => void, write: (text: string) => void): Program {
  const root = new Program('commitd')
    .description('Talk to a commitd server, or run one (serve).')
    .version(VERSION, '-V, --version', 'print the version')
    .option('--url <url>', `commitd to talk to (default: $COMMITD_URL or ${DEFAULT_URL})`)
    .option('--token <token>', 'bearer token (default: $COMMITD_TOKEN)')
    .option('--json', 'JSON on stdout, for scripts', false)
    .helpOption('-h, --help', 'this text')
    .addHelpText('after', EPILOG)
    .showSuggestionAfterError(true)
    .exitOverride()
    .configureOutput({ writeOut: write, writeErr: write, outputError: () => undefined });

  root
    .command('serve')
    .description('run the commitd server (configured by COMMITD_* and COMMITD_CONFIG)')
    .action(() => chosen({ name: 'serve' }));

  const sessions = root.command('sessions').description('sessions: list, show, cancel, resolve');
  sessions
    .command('list')
    .description('sessions by state, newest first, one page at a time (no state: the open and failed ones)')
    .addOption(new Option('--state <state>', 'only sessions in this state').choices(LISTABLE_STATES))
    .option('--limit <n>', `sessions per page (1–${MAX_LIMIT}; the server's default when absent)`, positiveLimit)
    .option('--cursor <cursor>', 'the page after the one that printed this cursor')
    .action((options: { state?: ListState; limit?: number; cursor?: string }) =>
      chosen({
        name: 'sessions list',
        ...(options.state === undefined ? {} : { state: options.state }),
        ...(options.limit === undefined ? {} : { limit: options.limit }),
        ...(options.cursor === undefined ? {} : { cursor: options.cursor }),
      }),
    );
  sessions
    .command('show')
    .description("one session's state")
    .argument('<key>', 'idempotency key')
    .action((key: string) => chosen({ name: 'sessions show', key }));
  sessions
    .command('cancel')
    .description('cancel an open session')
    .argument('<key>', 'idempotency key')
    .action((key: string) => chosen({ name: 'sessions cancel', key }));
  sessions
    .command('resolve')
    .description('decide a failed session: retry rolls it forward again, abandon gives it up')
    .argument('<key>', 'idempotency key')
    .addArgument(new Argument('<action>', 'what to do').choices(['retry', 'abandon']))
    .action((key: string, action: 'retry' | 'abandon') => chosen({ name: 'sessions resolve', key, action }));

  const stores = root.command('stores').description('stores: list, add, remove');
  stores
    .command('list')
    .description('the stores the server knows')
    .action(() => chosen({ name: 'stores list' }));
  stores
    .command('add')
    .description('register a store of a type the server has loaded')
    .argument('<name>', 'store name')
    .argument('<type>', 'store type: sqlite, postgres, redis, etcd, or a plugin type')
    .option('--options <json>', 'the type’s options as a JSON object', optionsObject, {})
    .action((name: string, type: string, options: { options: Record<string, unknown> }) =>
      chosen({ name: 'stores add', store: name, type, options: options.options }),
    );
  stores
    .command('remove')
    .description('remove a store (refused while a session uses it)')
    .argument('<name>', 'store name')
    .action((name: string) => chosen({ name: 'stores remove', store: name }));

  root
    .command('recover')
    .description('retry every failed session once; exit 1 if any still fails')
    .option('--once', 'one pass (the server itself recovers periodically; this is the only mode)', false)
    .action((options: { once: boolean }) => {
      if (!options.once) throw new UsageError('recover runs one pass: pass --once');
      chosen({ name: 'recover' });
    });

  for (const command of [root, ...root.commands, ...sessions.commands, ...stores.commands])
    command.exitOverride().configureOutput({ writeOut: write, writeErr: write, outputError: () => undefined });
  return root;
}

/** `commitd` or `commitd sessions` alone: a usage error naming what may follow, not a help page. */
function missingCommand(root: Program, argv: readonly string[]): string {
  const group = root.commands.find((command) => argv.includes(command.name()) && command.commands.length > 0);
  if (group === undefined) return 'no command given';
  return `"${group.name()}" needs a command: ${group.commands.map((command) => command.name()).join(', ')}`;
}

/** commander's message without its "error: " prefix and trailing full stop. */
function usageMessage(error: CommanderError): string {
  return error.message.replace(/^error: /, '').replace(/\.$/, '');
}

/** Parses `argv` (without node and the script); `env` supplies `COMMITD_URL` and `COMMITD_TOKEN`. */
export function parseInvocation(argv: readonly string[], env: Readonly<Record<string, string | undefined>>): Invocation {
  let command: Command | undefined;
  let printed = '';
  const root = program(
    (chosen) => {
      command = chosen;
    },
    (text) => {
      printed += text;
    },
  );
  try {
    root.parse([...argv], { from: 'user' });
  } catch (error) {
    if (error instanceof UsageError) throw error;
    if (!(error instanceof CommanderError)) throw error;
    if (error.code === 'commander.helpDisplayed' || error.code === 'commander.version') command = { name: 'help', text: printed.trimEnd() };
    else if (error.code === 'commander.help') throw new UsageError(missingCommand(root, argv));
    else throw new UsageError(usageMessage(error));
  }
  if (command === undefined) throw new UsageError('no command given');
  const globals = root.opts<{ url?: string; token?: string; json: boolean }>();
  const url = globals.url ?? (env.COMMITD_URL || DEFAULT_URL);
  if (!URL.canParse(url) || !/^https?:$/.test(new URL(url).protocol)) throw new UsageError(`--url must be an http(s) URL, not ${JSON.stringify(url)}`);
  const token = globals.token ?? (env.COMMITD_TOKEN || undefined);
  return { command, url, token, json: globals.json };
}

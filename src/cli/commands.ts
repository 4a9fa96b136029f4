/**
 * What each operator command does through the SDK, and what it prints: one result with a
 * human rendering and a JSON value, so `--json` never changes what is done.
 * @module
 */
import { CommitdApiError, type CommitdClient } from '@commitd/client';
import type { Command } from './args.ts';
import { formatRecovery, formatSession, formatSessions, formatStores, type RecoveryOutcome } from './format.ts';

/** A command's result. */
export interface Output {
  readonly text: string;
  readonly json: unknown;
  /** 1 when the command ran but did not achieve its aim (a session still failed). */
  readonly exitCode: 0 | 1;
}

/** An answer the CLI turns into `commitd: <code>: <detail>` and exit 1, when the server itself had nothing to say. */
export class CommandError extends Error {
  constructor(
    readonly code: string,
    readonly detail: string,
  ) {
    super(`${code}: ${detail}`);
  }
}

const ok = (text: string, json: unknown): Output => ({ text, json, exitCode: 0 });

/**
 * `recover --once`: every `failed` session gets one `retry` (roll forward again), in turn,
 * so an operator sees each outcome; one refusal does not stop the others. Failed sessions
 * are the ones recovery could not finish alone, so retrying them is the operator's call —
 * the command makes it once, on purpose, rather than looping.
 */
async function recoverOnce(client: CommitdClient): Promise<Output> {
  const failed = await client.listSessions({ state: 'failed' });
  const outcomes: RecoveryOutcome[] = [];
  for (const session of failed) {
    try {
      const after = await client.resolve(session.key, 'retry');
      const error = 'error' in after ? after.error : undefined;
      outcomes.push({ key: session.key, result: after.state, detail: error ?? '' });
    } catch (error) {
      if (!(error instanceof CommitdApiError)) throw error;
      outcomes.push({ key: session.key, result: 'error', detail: `${error.code}: ${error.detail}` });
    }
  }
  const allCommitted = outcomes.every((outcome) => outcome.result === 'committed');
  return { text: formatRecovery(outcomes), json: outcomes, exitCode: allCommitted ? 0 : 1 };
}

/** Runs one client-side command (everything but `help` and `serve`). */
export async function execute(command: Exclude<Command, { name: 'help' | 'serve' }>, client: CommitdClient): Promise<Output> {
  switch (command.name) {
    case 'sessions list': {
      const sessions = await client.listSessions({ state: command.state });
      return ok(formatSessions(sessions), sessions);
    }
    case 'sessions show': {
      const session = await client.get(command.key);
      if (session === undefined) throw new CommandError('not_found', `no session under key ${JSON.stringify(command.key)}`);
      return ok(formatSession(session), session);
    }
    case 'sessions cancel': {
      const cancelled = await client.cancel(command.key);
      return ok(`cancelled ${cancelled.key}`, cancelled);
    }
    case 'stores list': {
      const stores = await client.listStores();
      return ok(formatStores(stores), stores);
    }
    case 'recover':
      return recoverOnce(client);
  }
}

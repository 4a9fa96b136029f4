/**
 * What each operator command does through the SDK, and what it prints: one result with a
 * human rendering and a JSON value, so `--json` never changes what is done.
 * @module
 */
import { CommitdApiError, type CommitdClient, type ListableState } from '@commitd/client';
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

/** Where a long command says what it is doing (stderr), line by line. */
export type Progress = (line: string) => void;

const ok = (text: string, json: unknown): Output => ({ text, json, exitCode: 0 });

/**
 * `recover --once`: every `failed` session gets one `retry` (roll forward again), in turn,
 * so an operator sees each outcome; one refusal does not stop the others. Failed sessions
 * are the ones recovery could not finish alone, so retrying them is the operator's call —
 * the command makes it once, on purpose, rather than looping. It says what it does as it
 * goes: how many it found, then each outcome with the running counts.
 */
async function recoverOnce(client: CommitdClient, progress: Progress): Promise<Output> {
  progress('recover: listing failed sessions');
  const failed = await client.listSessions({ state: 'failed' });
  progress(`recover: ${failed.length} failed session${failed.length === 1 ? '' : 's'} to retry`);
  const outcomes: RecoveryOutcome[] = [];
  const counts = { committed: 0, failed: 0, error: 0 };
  for (const [index, session] of failed.entries()) {
    progress(`recover: [${index + 1}/${failed.length}] retrying ${session.key}`);
    let outcome: RecoveryOutcome;
    try {
      const after = await client.resolve(session.key, 'retry');
      const error = 'error' in after ? after.error : undefined;
      outcome = { key: session.key, result: after.state, detail: error ?? '' };
    } catch (error) {
      if (!(error instanceof CommitdApiError)) throw error;
      // A retry that fails again answers 409 store_conflict: the session is still failed.
      outcome = { key: session.key, result: error.code === 'store_conflict' ? 'failed' : 'error', detail: `${error.code}: ${error.detail}` };
    }
    outcomes.push(outcome);
    if (outcome.result === 'committed') counts.committed++;
    else if (outcome.result === 'failed') counts.failed++;
    else counts.error++;
    progress(
      `recover: [${index + 1}/${failed.length}] ${session.key}: ${outcome.result} (${counts.committed} committed, ${counts.failed} still failed, ${counts.error} refused)`,
    );
  }
  const allCommitted = outcomes.every((outcome) => outcome.result === 'committed');
  return { text: formatRecovery(outcomes), json: outcomes, exitCode: allCommitted ? 0 : 1 };
}

/** One page of `sessions list`; `nextCursor` when more follow. */
async function listSessions(client: CommitdClient, command: Extract<Command, { name: 'sessions list' }>): Promise<Output> {
  // The reply type of this client may predate committed/abandoned listings; the server decides what it accepts.
  const page = await client.listSessionsPage({ state: command.state as ListableState | undefined, limit: command.limit, cursor: command.cursor });
  return ok(formatSessions(page.sessions, page.nextCursor), page);
}

/** Runs one client-side command (everything but `help` and `serve`). */
export async function execute(
  command: Exclude<Command, { name: 'help' | 'serve' }>,
  client: CommitdClient,
  progress: Progress = () => undefined,
): Promise<Output> {
  switch (command.name) {
    case 'sessions list':
      return listSessions(client, command);
    case 'sessions show': {
      const session = await client.get(command.key);
      if (session === undefined) throw new CommandError('not_found', `no session under key ${JSON.stringify(command.key)}`);
      return ok(formatSession(session), session);
    }
    case 'sessions cancel': {
      const cancelled = await client.cancel(command.key);
      return ok(`cancelled ${cancelled.key}`, cancelled);
    }
    case 'sessions resolve': {
      const after = await client.resolve(command.key, command.action);
      const text = after.state === 'abandoned' ? `abandoned ${after.key}` : formatSession(after);
      return ok(text, after);
    }
    case 'stores list': {
      const stores = await client.listStores();
      return ok(formatStores(stores), stores);
    }
    case 'stores add': {
      const store = await client.addStore({ name: command.store, type: command.type, options: command.options });
      return ok(`added ${store.name} (${store.type})`, store);
    }
    case 'stores remove':
      await client.removeStore(command.store);
      return ok(`removed ${command.store}`, { name: command.store, removed: true });
    case 'recover':
      return recoverOnce(client, progress);
  }
}

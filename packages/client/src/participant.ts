/**
 * The participant side of commitd's `http` store type, exported as
 * `@commitd/client/participant`: a barrier, as DTM's, that a participant service runs
 * around its own business write, in its own database and in the same transaction, so that
 * commitd's try / confirm / cancel calls are safe however often and in whatever order they
 * arrive (see docs/participant.md):
 * - a repeated call for one attempt is a no-op (its business step does not run again);
 * - a try that arrives after its attempt's cancel is refused (409), as is a confirm without
 *   a try, and a cancel after a confirm;
 * - a cancel that overtakes its try leaves a `cancelled` tombstone, so the late try is refused.
 *
 * One row per (store, key, attempt) in the table `commitd_barrier`, in SQLite or
 * PostgreSQL. The functions take the transaction the caller already holds; the helpers
 * {@link sqliteParticipant} and {@link postgresParticipant} open one, and
 * {@link participantHandler} / {@link participantRoutes} serve the three endpoints.
 * Nothing here imports a database driver: better-sqlite3 and pg fit the small interfaces below.
 * @module
 */

/** The three calls commitd makes. */
export type ParticipantPhase = 'try' | 'confirm' | 'cancel';

/** One change of a try, as the worker sent it to commitd. */
export interface ParticipantChange {
  readonly action: string;
  readonly body?: unknown;
}

/** One call of commitd, parsed from its request body. */
export interface ParticipantCall {
  readonly phase: ParticipantPhase;
  /** The session's idempotency key (also the `Idempotency-Key` header). */
  readonly key: string;
  /** Names one attempt of the key: a new attempt after a cancel is a new row. */
  readonly attempt: string;
  /** The name of the commitd store this service is. */
  readonly store: string;
  /** A try's changes; empty for confirm and cancel. */
  readonly changes: readonly ParticipantChange[];
}

/** What a call did: ran its business step, was a repeat, or (a cancel before any try) left a tombstone. */
export type BarrierOutcome = 'applied' | 'repeated' | 'tombstone';

/** The state of one attempt in the barrier table. */
type BarrierState = 'tried' | 'confirmed' | 'cancelled';

/** The barrier table; create it with {@link barrierSchema}. */
export const BARRIER_TABLE = 'commitd_barrier';

/** A request body that is not a call of the protocol: `400`. */
export class ParticipantRequestError extends Error {
  readonly status = 400;
  readonly code = 'invalid_request';
}

/** The barrier refused the call (a late try, a confirm without a try, a cancel after a confirm): `409`. */
export class BarrierRefusedError extends Error {
  readonly status = 409;
  readonly code: 'attempt_cancelled' | 'not_tried' | 'already_confirmed';

  constructor(code: BarrierRefusedError['code'], message: string) {
    super(message);
    this.code = code;
  }
}

/**
 * Thrown by a business `try` that refuses the changes (no stock, say): the transaction
 * rolls back, the answer is `409` (or `422`) with this problem, and commitd answers its
 * worker `409 store_conflict` carrying it.
 */
export class ParticipantRefusal extends Error {
  readonly status: 409 | 422;
  readonly code: string;

  constructor(message: string, options: { status?: 409 | 422; code?: string } = {}) {
    super(message);
    this.status = options.status ?? 409;
    this.code = options.code ?? 'refused';
  }
}

/** The SQL the barrier runs, inside a transaction the caller holds. */
export interface BarrierSql {
  readonly dialect: 'sqlite' | 'postgres';
  /** Runs one statement with `?` (sqlite) or `$n` (postgres) parameters. */
  query(sql: string, params: readonly unknown[]): Promise<{ readonly rows: readonly Record<string, unknown>[]; readonly rowCount: number }>;
}

const MAX_FIELD = 1000;

function field(body: Record<string, unknown>, name: string, max = MAX_FIELD): string {
  const value = body[name];
  if (typeof value !== 'string' || value.length === 0 || value.length > max) {
    throw new ParticipantRequestError(`${name} must be a string of 1 to ${max} characters`);
  }
  return value;
}

/**
 * Parses commitd's request body for `phase`. `idempotencyKey`, the request's
 * `Idempotency-Key` header when the framework gives it, must equal the body's key.
 */
export function parseParticipantCall(phase: ParticipantPhase, body: unknown, idempotencyKey?: string): ParticipantCall {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new ParticipantRequestError('the body must be a JSON object');
  const record = body as Record<string, unknown>;
  const key = field(record, 'key');
  if (idempotencyKey !== undefined && idempotencyKey !== key) throw new ParticipantRequestError('the Idempotency-Key header and the body name different keys');
  const call = { phase, key, attempt: field(record, 'attempt', 200), store: field(record, 'store', 200) };
  if (phase !== 'try') return { ...call, changes: [] };
  if (!Array.isArray(record.changes)) throw new ParticipantRequestError('a try carries changes: an array');
  const changes = record.changes.map((change: unknown, i): ParticipantChange => {
    if (typeof change !== 'object' || change === null || typeof (change as { action?: unknown }).action !== 'string') {
      throw new ParticipantRequestError(`changes[${i}] must be an object with an action`);
    }
    return change as ParticipantChange;
  });
  return { ...call, changes };
}

/** The statement creating the barrier table (if absent) in `dialect`. */
export function barrierSchema(dialect: BarrierSql['dialect']): string {
  const time = dialect === 'postgres' ? 'timestamptz NOT NULL DEFAULT now()' : "TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))";
  return (
    `CREATE TABLE IF NOT EXISTS ${BARRIER_TABLE} (store TEXT NOT NULL, key TEXT NOT NULL, attempt TEXT NOT NULL, ` +
    `state TEXT NOT NULL CHECK (state IN ('tried', 'confirmed', 'cancelled')), updated_at ${time}, PRIMARY KEY (store, key, attempt))`
  );
}

/** Statements of one dialect. */
function statements(dialect: BarrierSql['dialect']) {
  const p = dialect === 'postgres' ? (n: number) => `$${n}` : () => '?';
  const where = (first: number) => `store = ${p(first)} AND key = ${p(first + 1)} AND attempt = ${p(first + 2)}`;
  const now = dialect === 'postgres' ? 'now()' : "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";
  return {
    /** Parameters: store, key, attempt, state. */
    insert: `INSERT INTO ${BARRIER_TABLE} (store, key, attempt, state) VALUES (${p(1)}, ${p(2)}, ${p(3)}, ${p(4)}) ON CONFLICT DO NOTHING`,
    /** Parameters: store, key, attempt. FOR UPDATE: a concurrent call for the same attempt waits (sqlite's write lock does that already). */
    select: `SELECT state FROM ${BARRIER_TABLE} WHERE ${where(1)}${dialect === 'postgres' ? ' FOR UPDATE' : ''}`,
    /** Parameters: state, store, key, attempt (`?` placeholders are positional). */
    update: `UPDATE ${BARRIER_TABLE} SET state = ${p(1)}, updated_at = ${now} WHERE ${where(2)}`,
  };
}

/**
 * The barrier: records `call` in the caller's transaction and runs `business` when the call
 * takes effect — a try's reservation, a confirm's commit, a cancel's release — at most once
 * per attempt. Throws {@link BarrierRefusedError} for a call the protocol refuses; anything
 * `business` throws (a {@link ParticipantRefusal}, say) propagates, and the caller's
 * transaction must roll back, the barrier row with it.
 */
export async function barrier(sql: BarrierSql, call: ParticipantCall, business: () => Promise<void> | void): Promise<BarrierOutcome> {
  const q = statements(sql.dialect);
  const id = [call.store, call.key, call.attempt] as const;
  const current = async (): Promise<BarrierState | undefined> => (await sql.query(q.select, id)).rows[0]?.state as BarrierState | undefined;
  const move = async (state: BarrierState) => {
    await sql.query(q.update, [state, ...id]);
    await business();
    return 'applied' as const;
  };
  switch (call.phase) {
    case 'try': {
      if ((await sql.query(q.insert, [...id, 'tried'])).rowCount === 1) {
        await business();
        return 'applied';
      }
      if ((await current()) === 'cancelled')
        throw new BarrierRefusedError('attempt_cancelled', `attempt ${call.attempt} of ${call.key} was cancelled: its try is refused`);
      return 'repeated';
    }
    case 'confirm': {
      const state = await current();
      if (state === 'confirmed') return 'repeated';
      if (state === 'tried') return move('confirmed');
      if (state === 'cancelled')
        throw new BarrierRefusedError('attempt_cancelled', `attempt ${call.attempt} of ${call.key} was cancelled: it cannot be confirmed`);
      throw new BarrierRefusedError('not_tried', `attempt ${call.attempt} of ${call.key} was never tried: a confirm without a try is refused`);
    }
    case 'cancel': {
      if ((await sql.query(q.insert, [...id, 'cancelled'])).rowCount === 1) return 'tombstone';
      const state = await current();
      if (state === 'cancelled') return 'repeated';
      if (state === 'tried') return move('cancelled');
      throw new BarrierRefusedError('already_confirmed', `attempt ${call.attempt} of ${call.key} is confirmed: it cannot be cancelled`);
    }
  }
}

/** A participant's own database: opens a transaction and hands it, with the barrier's SQL over it, to `work`. */
export interface ParticipantDatabase<Tx> {
  readonly dialect: BarrierSql['dialect'];
  /** Creates the barrier table if absent. */
  ensureSchema(): Promise<void>;
  /** Runs `work` in one transaction: committed when it resolves, rolled back when it throws. */
  transaction<T>(work: (tx: Tx, sql: BarrierSql) => Promise<T>): Promise<T>;
}

/** What the barrier needs of a better-sqlite3 `Database`. */
export interface SqliteDatabaseLike {
  prepare(sql: string): {
    run(...params: unknown[]): { changes: number };
    all(...params: unknown[]): unknown[];
    readonly reader: boolean;
  };
  exec(sql: string): unknown;
}

/**
 * A better-sqlite3 database as a participant's database. Transactions are `BEGIN
 * IMMEDIATE` (the write lock first, so calls for one attempt serialise) and, since `work`
 * is asynchronous on one connection, run one at a time.
 */
export function sqliteParticipant<Db extends SqliteDatabaseLike>(db: Db): ParticipantDatabase<Db> {
  let queue: Promise<unknown> = Promise.resolve();
  const sql: BarrierSql = {
    dialect: 'sqlite',
    async query(text, params) {
      const statement = db.prepare(text);
      if (statement.reader) {
        const rows = statement.all(...params) as Record<string, unknown>[];
        return { rows, rowCount: rows.length };
      }
      return { rows: [], rowCount: statement.run(...params).changes };
    },
  };
  return {
    dialect: 'sqlite',
    async ensureSchema() {
      db.exec(barrierSchema('sqlite'));
    },
    transaction<T>(work: (tx: Db, sql: BarrierSql) => Promise<T>): Promise<T> {
      const run = async () => {
        db.exec('BEGIN IMMEDIATE');
        try {
          const result = await work(db, sql);
          db.exec('COMMIT');
          return result;
        } catch (err) {
          db.exec('ROLLBACK');
          throw err;
        }
      };
      const next = queue.then(run, run);
      queue = next.catch(() => undefined);
      return next;
    },
  };
}

/** What the barrier needs of a pg `PoolClient`. */
export interface PgClientLike {
  query(text: string, values?: unknown[]): Promise<{ rows: Record<string, unknown>[]; rowCount: number | null }>;
  release(err?: Error | boolean): void;
}

/** What the barrier needs of a pg `Pool`. */
export interface PgPoolLike {
  connect(): Promise<PgClientLike>;
}

/** A pg pool as a participant's database: each transaction on a client of its own. */
export function postgresParticipant<Client extends PgClientLike>(pool: { connect(): Promise<Client> }): ParticipantDatabase<Client> {
  return {
    dialect: 'postgres',
    async ensureSchema() {
      const client = await pool.connect();
      try {
        await client.query(barrierSchema('postgres'));
      } finally {
        client.release();
      }
    },
    async transaction<T>(work: (tx: Client, sql: BarrierSql) => Promise<T>): Promise<T> {
      const client = await pool.connect();
      const sql: BarrierSql = {
        dialect: 'postgres',
        async query(text, params) {
          const result = await client.query(text, [...params]);
          return { rows: result.rows, rowCount: result.rowCount ?? 0 };
        },
      };
      let broken: Error | undefined;
      try {
        await client.query('BEGIN');
        const result = await work(client, sql);
        await client.query('COMMIT');
        return result;
      } catch (err) {
        await client.query('ROLLBACK').catch((rollbackError: Error) => {
          broken = rollbackError;
        });
        throw err;
      } finally {
        client.release(broken);
      }
    },
  };
}

/** A participant's business steps, each run in the barrier's transaction `tx`, at most once per attempt. */
export interface ParticipantBusiness<Tx> {
  /** Reserve what `call.changes` need; throw {@link ParticipantRefusal} to refuse. */
  try(call: ParticipantCall, tx: Tx): Promise<void> | void;
  /** Make the reservation final. */
  confirm(call: ParticipantCall, tx: Tx): Promise<void> | void;
  /** Release the reservation (only called when a try took effect). */
  cancel(call: ParticipantCall, tx: Tx): Promise<void> | void;
}

/** An HTTP answer, framework-neutral. */
export interface ParticipantAnswer {
  readonly status: number;
  readonly contentType: 'application/json' | 'application/problem+json';
  readonly body: Readonly<Record<string, unknown>>;
}

function problem(status: number, code: string, title: string, detail: string): ParticipantAnswer {
  return { status, contentType: 'application/problem+json', body: { type: `urn:commitd:participant:${code}`, title, status, detail, code } };
}

/**
 * The three endpoints as one function over a request body, for any HTTP framework: parses
 * the call, runs the barrier and the business step in one transaction of `database`, and
 * answers `200 {key, attempt, store, phase, outcome}`, `400`, or `409`/`422` problem+json.
 * Other errors (the database is down) propagate: answer them `5xx`, which commitd retries.
 */
export function participantHandler<Tx>(
  database: ParticipantDatabase<Tx>,
  business: ParticipantBusiness<Tx>,
): (phase: ParticipantPhase, body: unknown, idempotencyKey?: string) => Promise<ParticipantAnswer> {
  return async (phase, body, idempotencyKey) => {
    let call: ParticipantCall;
    try {
      call = parseParticipantCall(phase, body, idempotencyKey);
    } catch (err) {
      if (err instanceof ParticipantRequestError) return problem(400, err.code, 'Invalid participant call', err.message);
      throw err;
    }
    try {
      const outcome = await database.transaction((tx, sql) => barrier(sql, call, () => business[phase](call, tx)));
      return { status: 200, contentType: 'application/json', body: { key: call.key, attempt: call.attempt, store: call.store, phase, outcome } };
    } catch (err) {
      if (err instanceof BarrierRefusedError) return problem(409, err.code, 'Refused by the barrier', err.message);
      if (err instanceof ParticipantRefusal) return problem(err.status, err.code, 'Refused by the participant', err.message);
      throw err;
    }
  };
}

/** The little of a fastify instance the routes use (no dependency on fastify itself). */
export interface FastifyLike {
  post(
    path: string,
    handler: (
      request: { readonly body: unknown; readonly headers: Readonly<Record<string, string | string[] | undefined>> },
      reply: { code(status: number): { type(contentType: string): { send(body: unknown): unknown } } },
    ) => Promise<unknown>,
  ): unknown;
}

/**
 * A fastify plugin serving `POST /try`, `/confirm` and `/cancel` with the barrier:
 * `app.register(participantRoutes(database, business), { prefix: '/stock' })`, and the
 * commitd store's `baseUrl` is `http://host:port/stock`.
 */
export function participantRoutes<Tx>(database: ParticipantDatabase<Tx>, business: ParticipantBusiness<Tx>): (app: FastifyLike) => Promise<void> {
  const handle = participantHandler(database, business);
  return async (app) => {
    for (const phase of ['try', 'confirm', 'cancel'] as const) {
      app.post(`/${phase}`, async (request, reply) => {
        const header = request.headers['idempotency-key'];
        const answer = await handle(phase, request.body, typeof header === 'string' ? header : undefined);
        return reply.code(answer.status).type(answer.contentType).send(answer.body);
      });
    }
  };
}

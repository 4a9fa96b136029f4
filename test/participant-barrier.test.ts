/**
 * The participant barrier of `@commitd/client/participant`, one suite run against both of
 * its databases (SQLite through better-sqlite3, PostgreSQL through pg): each call of an
 * attempt takes effect at most once, in the same transaction as the business write, and
 * the protocol's refusals hold — a late try after its cancel, a confirm without a try, a
 * cancel after a confirm. Also the framework-neutral handler's answers.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import Database from 'better-sqlite3';
import pg from 'pg';
import {
  BarrierRefusedError,
  ParticipantRefusal,
  barrier,
  participantHandler,
  postgresParticipant,
  sqliteParticipant,
  type ParticipantCall,
  type ParticipantDatabase,
  type ParticipantPhase,
} from '../packages/client/src/participant.ts';
import { makeTempDir, removeTempDir } from './harness/child.ts';
import { postgresBinDir, startPostgres, type PostgresServer } from './harness/postgres.ts';
import { skipUnlessFound } from './harness/require.ts';

/** A database under test: the barrier's, plus a business table `effects(key, attempt, phase)` to count what ran. */
interface Fixture {
  readonly database: ParticipantDatabase<unknown>;
  /** Records one business step in the transaction `tx`. */
  record(tx: unknown, call: ParticipantCall): Promise<void>;
  /** Business steps recorded for `attempt`, by phase. */
  effects(attempt: string): Promise<Record<string, number>>;
  close(): Promise<void>;
}

interface Backend {
  readonly name: string;
  readonly skip: string | false;
  start(): Promise<Fixture>;
}

let postgres: PostgresServer | undefined;
const dir = makeTempDir('barrier');

const backends: Backend[] = [
  {
    name: 'sqlite',
    skip: false,
    async start() {
      const db = new Database(join(dir, `barrier-${randomUUID()}.db`));
      db.exec('CREATE TABLE effects (key TEXT, attempt TEXT, phase TEXT)');
      const database = sqliteParticipant(db);
      await database.ensureSchema();
      return {
        database: database as ParticipantDatabase<unknown>,
        async record(tx, call) {
          (tx as Database.Database).prepare('INSERT INTO effects VALUES (?, ?, ?)').run(call.key, call.attempt, call.phase);
        },
        async effects(attempt) {
          const rows = db.prepare('SELECT phase, count(*) AS n FROM effects WHERE attempt = ? GROUP BY phase').all(attempt) as { phase: string; n: number }[];
          return Object.fromEntries(rows.map((row) => [row.phase, row.n]));
        },
        async close() {
          db.close();
        },
      };
    },
  },
  {
    name: 'postgres',
    skip: skipUnlessFound({ PostgreSQL: postgresBinDir() }),
    async start() {
      postgres ??= await startPostgres();
      const pool = new pg.Pool({ connectionString: postgres.connectionString, max: 8 });
      await pool.query('CREATE TABLE IF NOT EXISTS effects (key TEXT, attempt TEXT, phase TEXT)');
      const database = postgresParticipant(pool);
      await database.ensureSchema();
      return {
        database: database as ParticipantDatabase<unknown>,
        async record(tx, call) {
          await (tx as pg.PoolClient).query('INSERT INTO effects VALUES ($1, $2, $3)', [call.key, call.attempt, call.phase]);
        },
        async effects(attempt) {
          const { rows } = await pool.query<{ phase: string; n: string }>('SELECT phase, count(*) AS n FROM effects WHERE attempt = $1 GROUP BY phase', [
            attempt,
          ]);
          return Object.fromEntries(rows.map((row) => [row.phase, Number(row.n)]));
        },
        async close() {
          await pool.end();
        },
      };
    },
  },
];

after(async () => {
  await postgres?.cleanup();
  removeTempDir(dir);
});

const callOf = (phase: ParticipantPhase, key: string, attempt: string): ParticipantCall => ({ phase, key, attempt, store: 'stock', changes: [] });

for (const backend of backends) {
  describe(`participant barrier (${backend.name})`, { skip: backend.skip }, () => {
    let fixture: Fixture;
    before(async () => {
      fixture = await backend.start();
    });
    after(async () => {
      await fixture?.close();
    });

    /** One call through the barrier with a business step that records itself. */
    const call = (phase: ParticipantPhase, key: string, attempt: string) =>
      fixture.database.transaction((tx, sql) => {
        const c = callOf(phase, key, attempt);
        return barrier(sql, c, () => fixture.record(tx, c));
      });

    it('try, confirm: each takes effect once however often it is repeated', async () => {
      const attempt = randomUUID();
      assert.equal(await call('try', 'k1', attempt), 'applied');
      assert.equal(await call('try', 'k1', attempt), 'repeated');
      assert.equal(await call('confirm', 'k1', attempt), 'applied');
      assert.equal(await call('confirm', 'k1', attempt), 'repeated');
      // A try repeated after the confirm (a late duplicate) changes nothing either.
      assert.equal(await call('try', 'k1', attempt), 'repeated');
      assert.deepEqual(await fixture.effects(attempt), { try: 1, confirm: 1 });
    });

    it('a confirm without a try is refused, and so is a cancel after a confirm', async () => {
      const attempt = randomUUID();
      await assert.rejects(call('confirm', 'k2', attempt), (err: unknown) => err instanceof BarrierRefusedError && err.code === 'not_tried');
      await call('try', 'k2', attempt);
      await call('confirm', 'k2', attempt);
      await assert.rejects(call('cancel', 'k2', attempt), (err: unknown) => err instanceof BarrierRefusedError && err.code === 'already_confirmed');
      assert.deepEqual(await fixture.effects(attempt), { try: 1, confirm: 1 });
    });

    it('try then cancel releases once; a confirm after the cancel is refused', async () => {
      const attempt = randomUUID();
      await call('try', 'k3', attempt);
      assert.equal(await call('cancel', 'k3', attempt), 'applied');
      assert.equal(await call('cancel', 'k3', attempt), 'repeated');
      await assert.rejects(call('confirm', 'k3', attempt), (err: unknown) => err instanceof BarrierRefusedError && err.code === 'attempt_cancelled');
      assert.deepEqual(await fixture.effects(attempt), { try: 1, cancel: 1 });
    });

    it("a cancel that overtakes its try leaves a tombstone: the late try is refused, the key's next attempt goes through", async () => {
      const [late, next] = [randomUUID(), randomUUID()];
      assert.equal(await call('cancel', 'k4', late), 'tombstone');
      await assert.rejects(call('try', 'k4', late), (err: unknown) => err instanceof BarrierRefusedError && err.code === 'attempt_cancelled');
      assert.deepEqual(await fixture.effects(late), {}, 'neither the cancel nor the late try ran a business step');
      assert.equal(await call('try', 'k4', next), 'applied');
      assert.equal(await call('confirm', 'k4', next), 'applied');
      assert.deepEqual(await fixture.effects(next), { try: 1, confirm: 1 });
    });

    it('a business step that throws rolls the barrier row back with it', async () => {
      const attempt = randomUUID();
      await assert.rejects(
        fixture.database.transaction((tx, sql) =>
          barrier(sql, callOf('try', 'k5', attempt), async () => {
            await fixture.record(tx, callOf('try', 'k5', attempt));
            throw new ParticipantRefusal('no stock');
          }),
        ),
        ParticipantRefusal,
      );
      assert.deepEqual(await fixture.effects(attempt), {});
      // Nothing was recorded: commitd's cancel leaves a tombstone, and a confirm is refused.
      await assert.rejects(call('confirm', 'k5', attempt), BarrierRefusedError);
      assert.equal(await call('cancel', 'k5', attempt), 'tombstone');
    });

    it('a try and a cancel racing for one attempt: either both take effect in that order, or the try is refused', async () => {
      for (let round = 0; round < 10; round++) {
        const attempt = randomUUID();
        const [tried, cancelled] = await Promise.allSettled([call('try', 'k6', attempt), call('cancel', 'k6', attempt)]);
        assert.equal(cancelled.status, 'fulfilled');
        const effects = await fixture.effects(attempt);
        if (tried.status === 'fulfilled') {
          assert.equal(tried.value, 'applied');
          assert.equal((cancelled as PromiseFulfilledResult<string>).value, 'applied');
          assert.deepEqual(effects, { try: 1, cancel: 1 });
        } else {
          assert.ok(tried.reason instanceof BarrierRefusedError, String(tried.reason));
          assert.equal((cancelled as PromiseFulfilledResult<string>).value, 'tombstone');
          assert.deepEqual(effects, {});
        }
      }
    });

    it('the handler answers 200 with the outcome, 400 for a body outside the protocol, 409/422 problem+json for refusals', async () => {
      const handle = participantHandler(fixture.database, {
        try: (c, tx) => {
          if (c.changes.some((change) => change.action === 'refuse'))
            throw new ParticipantRefusal('refused by the business', { status: 422, code: 'bad_change' });
          return fixture.record(tx, c);
        },
        confirm: (c, tx) => fixture.record(tx, c),
        cancel: (c, tx) => fixture.record(tx, c),
      });
      const attempt = randomUUID();
      const body = { key: 'k7', attempt, store: 'stock', changes: [{ action: 'reserve', body: { sku: 'a' } }] };
      const tried = await handle('try', body, 'k7');
      assert.equal(tried.status, 200);
      assert.deepEqual(tried.body, { key: 'k7', attempt, store: 'stock', phase: 'try', outcome: 'applied' });
      assert.equal((await handle('try', body, 'k7')).body.outcome, 'repeated');
      for (const bad of [null, [], { key: 'k7', attempt }, { key: 'k7', attempt, store: 'stock' }, { ...body, changes: [{}] }]) {
        const answer = await handle('try', bad);
        assert.equal(answer.status, 400, JSON.stringify(bad));
        assert.equal(answer.contentType, 'application/problem+json');
      }
      assert.equal((await handle('confirm', { key: 'k7', attempt, store: 'stock' }, 'another-key')).status, 400);
      const refused = await handle('confirm', { key: 'k7', attempt: randomUUID(), store: 'stock' });
      assert.equal(refused.status, 409);
      assert.equal(refused.body.code, 'not_tried');
      const business = await handle('try', { ...body, attempt: randomUUID(), changes: [{ action: 'refuse' }] });
      assert.equal(business.status, 422);
      assert.equal(business.body.code, 'bad_change');
    });
  });
}

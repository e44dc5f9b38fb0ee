/**
 * A group-commit flush and a sweep batch touching the same rows at the same time, as the API and
 * the sweeper do in production. A trigger holds one of them open (mid-transaction, its row locks
 * taken) until the test lets it go, so the overlap is certain rather than likely.
 */
import { expect } from 'chai';
import { sql } from 'kysely';
import pg from 'pg';
import { GroupCommitHeartbeatWriter } from '../api/write/heartbeat-writer.ts';
import { openDatabase, type DatabaseHandle } from '../lib/infra/db.ts';
import { Sweeper } from '../sweeper/sweeper.ts';
import { createTestDatabase, silentLogger, type TestDatabase } from './support/database.ts';
import { waitFor } from './support/entry-points.ts';

const HELD_LOCK = 4242;
const range = (from: number, count: number) => Array.from({ length: count }, (_, i) => from + i);

describe('a group-commit flush during a sweep batch', () => {
  let database: TestDatabase;
  let apiPool: DatabaseHandle;
  let sweeperPool: DatabaseHandle;
  let heartbeats: GroupCommitHeartbeatWriter;
  let sweeper: Sweeper;
  let holder: pg.Client;

  beforeEach(async () => {
    database = await createTestDatabase();
    // Two processes in production: two pools here.
    const pool = (applicationName: string) =>
      openDatabase({
        connectionString: database.url,
        poolMax: 2,
        applicationName,
        logger: silentLogger,
      });
    apiPool = pool('pulse-api');
    sweeperPool = pool('pulse-sweeper');
    heartbeats = new GroupCommitHeartbeatWriter(apiPool.db, {
      maxBatchIds: 1000,
      maxDelayMs: 1,
      maxConcurrentFlushes: 2,
      maxQueuedIds: 10_000,
    });
    sweeper = new Sweeper(sweeperPool.db, silentLogger, {
      schedule: '* * * * * *',
      olderThanSeconds: 30,
      batchSize: 1000, // one batch covers the whole table
      leaseTtlSeconds: 30,
    });
    for (const id of range(1, 100)) await database.putRow(id, 120); // every row expired
    await sql`CREATE FUNCTION wait_for_test() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN PERFORM pg_advisory_xact_lock(${sql.lit(HELD_LOCK)}); RETURN NULL; END $$`.execute(
      database.db,
    );
    holder = new pg.Client({ connectionString: database.url });
    await holder.connect();
  });
  afterEach(async () => {
    await holder.end();
    await heartbeats.close();
    await sweeper.stop();
    await apiPool.close();
    await sweeperPool.close();
    await database.drop();
  });

  /** From now on, every `event` statement on pulse waits, before it commits, until release(). */
  async function holdStatements(event: 'INSERT' | 'DELETE'): Promise<() => Promise<void>> {
    await sql`CREATE TRIGGER wait_for_test AFTER ${sql.raw(event)} ON pulse
      FOR EACH STATEMENT EXECUTE FUNCTION wait_for_test()`.execute(database.db);
    await holder.query('SELECT pg_advisory_lock($1)', [HELD_LOCK]);
    return async () => {
      await holder.query('SELECT pg_advisory_unlock($1)', [HELD_LOCK]);
    };
  }

  const waiters = (count: number) =>
    waitFor(
      `${count} statements waiting for a lock`,
      async () => (await database.lockWaiters()) >= count,
    );

  it('a heartbeat for rows a sweep batch is deleting is written once the batch commits', async () => {
    const release = await holdStatements('DELETE');
    const sweeping = sweeper.sweepOnce();
    await waiters(1); // the batch deleted its rows and waits before commit
    const recorded = heartbeats.record([10, 20, 30]);
    await waiters(2); // the flush waits for the rows the batch holds
    await release();
    await recorded; // acknowledged: committed, no deadlock, no error
    const report = await sweeping;
    expect(report).to.include({ outcome: 'done', deleted: 100 });
    expect(await database.userIds()).to.deep.equal([10, 20, 30]);
    for (const id of [10, 20, 30]) expect(await database.ageOf(id)).to.be.below(2);
  });

  it('a sweep batch never deletes rows a flush in progress is refreshing', async () => {
    const release = await holdStatements('INSERT');
    const recorded = heartbeats.record([30, 10, 20]);
    await waiters(1); // the flush refreshed its rows and waits before commit
    const sweeping = sweeper.sweepOnce();
    await waiters(2); // the batch's DELETE waits for the rows the flush holds
    await release();
    await recorded;
    const report = await sweeping;
    expect(report).to.include({ outcome: 'done', deleted: 97 });
    expect(await database.userIds()).to.deep.equal([10, 20, 30]);
  });
});

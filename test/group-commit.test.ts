import { expect } from 'chai';
import { sql } from 'kysely';
import pg from 'pg';
import {
  DirectHeartbeatWriter,
  GroupCommitHeartbeatWriter,
  HeartbeatRejected,
  type GroupCommitOptions,
} from '../api/write/heartbeat-writer.ts';
import { startTestApp, type TestApp } from './support/app.ts';
import { createTestDatabase, lockPulse, type TestDatabase } from './support/database.ts';
import { waitFor } from './support/entry-points.ts';

const range = (from: number, count: number) => Array.from({ length: count }, (_, i) => from + i);

describe('group commit', () => {
  let database: TestDatabase;
  beforeEach(async () => {
    database = await createTestDatabase();
  });
  afterEach(async () => {
    await database.drop();
  });

  function writer(options: Partial<GroupCommitOptions>, flushes: number[] = []) {
    return new GroupCommitHeartbeatWriter(
      database.db,
      {
        maxBatchIds: 1000,
        maxDelayMs: 5,
        maxConcurrentFlushes: 2,
        maxQueuedIds: 100_000,
        ...options,
      },
      { onFlush: ({ ids }) => flushes.push(ids) },
    );
  }

  it('writes many concurrent heartbeats in far fewer statements than requests', async () => {
    const flushes: number[] = [];
    const heartbeats = writer({ maxDelayMs: 20 }, flushes);
    await Promise.all(range(1, 500).map((id) => heartbeats.record([id])));
    expect(await database.userIds()).to.deep.equal(range(1, 500));
    expect(flushes.reduce((a, b) => a + b, 0)).to.equal(500);
    expect(flushes.length).to.be.below(50);
    await heartbeats.close();
  });

  it("logs a held presence's online transitions as held, and a client's own heartbeat in the same batch as heartbeat", async () => {
    const flushes: number[] = [];
    const heartbeats = writer({ maxDelayMs: 50 }, flushes);
    await Promise.all([
      heartbeats.record([1, 2]),
      heartbeats.record([2, 3], { held: true }),
      heartbeats.record([4], { held: true }),
      heartbeats.record([4]),
    ]);
    expect(flushes, 'one batch').to.deep.equal([6]);
    const { rows } = await sql<{ user_id: string; reason: string }>`
      SELECT user_id, reason FROM pulse_events ORDER BY user_id`.execute(database.db);
    expect(rows.map((r) => [Number(r.user_id), r.reason])).to.deep.equal([
      [1, 'heartbeat'],
      [2, 'heartbeat'],
      [3, 'held'],
      [4, 'heartbeat'],
    ]);
    await heartbeats.close();
  });

  it('answers a request only after its row is committed', async () => {
    const heartbeats = writer({ maxDelayMs: 1 });
    await heartbeats.record([7]);
    // A separate connection sees the row as soon as the promise resolved.
    const client = new pg.Client({ connectionString: database.url });
    await client.connect();
    const { rowCount } = await client.query('SELECT 1 FROM pulse WHERE user_id = 7');
    await client.end();
    expect(rowCount).to.equal(1);
    await heartbeats.close();
  });

  it('accepts the same id many times in one batch', async () => {
    const flushes: number[] = [];
    const heartbeats = writer({ maxDelayMs: 20 }, flushes);
    await Promise.all([
      heartbeats.record([5]),
      heartbeats.record([5]),
      heartbeats.record([5, 6, 5]),
      heartbeats.record([6]),
    ]);
    // One statement held all four requests: each request's distinct ids, 1 + 1 + 2 + 1.
    expect(flushes).to.deep.equal([5]);
    expect(await database.userIds()).to.deep.equal([5, 6]);
    await heartbeats.close();
  });

  it('keeps requests whole: one that does not fit in the forming batch starts the next', async () => {
    const flushes: number[] = [];
    const heartbeats = writer(
      { maxBatchIds: 3, maxDelayMs: 60_000, maxConcurrentFlushes: 1 },
      flushes,
    );
    const settled: string[] = [];
    const requests = [[1, 2], [3, 4], [5], [6, 7, 8, 9]].map((ids) =>
      heartbeats.record(ids).then(() => settled.push(ids.join(','))),
    );
    // [1, 2] goes as soon as [3, 4] makes 4 >= 3 ids queued; [3, 4] + [5] is full next; the
    // last one alone is larger than a batch.
    await heartbeats.close();
    await Promise.all(requests);
    expect(flushes).to.deep.equal([2, 3, 4]);
    expect(settled).to.deep.equal(['1,2', '3,4', '5', '6,7,8,9']);
    expect(await database.userIds()).to.deep.equal(range(1, 9));
  });

  it('runs flushes concurrently, up to the limit, without deadlocks', async () => {
    const heartbeats = writer({ maxBatchIds: 50, maxDelayMs: 1, maxConcurrentFlushes: 3 });
    // Overlapping id sets in opposite orders: unsorted batches could deadlock each other.
    // Each request is larger than maxBatchIds, so each is flushed on its own, at once.
    const requests = range(0, 40).map((i) =>
      heartbeats.record(i % 2 ? range(1, 60) : range(1, 60).reverse()),
    );
    expect(heartbeats.flushesInFlight).to.equal(3);
    expect(heartbeats.queuedIds).to.equal(37 * 60);
    await Promise.all(requests);
    expect(heartbeats.flushesInFlight).to.equal(0);
    expect(await database.userIds()).to.deep.equal(range(1, 60));
    await heartbeats.close();
  });

  it('fails every request of a failed flush and writes none of its ids', async () => {
    await sql`CREATE FUNCTION reject_666() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN IF NEW.user_id = 666 THEN RAISE EXCEPTION 'poison'; END IF; RETURN NEW; END $$`.execute(
      database.db,
    );
    await sql`CREATE TRIGGER reject_666 BEFORE INSERT ON pulse
      FOR EACH ROW EXECUTE FUNCTION reject_666()`.execute(database.db);
    const heartbeats = writer({ maxDelayMs: 30 });
    const results = await Promise.allSettled([
      heartbeats.record([1]),
      heartbeats.record([666]),
      heartbeats.record([2, 3]),
    ]);
    for (const result of results) {
      expect(result.status).to.equal('rejected');
      const reason = (result as PromiseRejectedResult).reason as HeartbeatRejected;
      expect(reason).to.be.instanceOf(HeartbeatRejected);
      expect(reason.reason).to.equal('write_failed');
    }
    expect(await database.userIds()).to.deep.equal([]);
    // The writer keeps working after a failed flush.
    await heartbeats.record([4]);
    expect(await database.userIds()).to.deep.equal([4]);
    await heartbeats.close();
  });

  it('refuses heartbeats once the queue is full, and writes the queued ones later', async () => {
    const release = await lockPulse(database.url);
    const heartbeats = writer({
      maxBatchIds: 2,
      maxDelayMs: 1,
      maxConcurrentFlushes: 1,
      maxQueuedIds: 4,
    });
    const first = heartbeats.record([1, 2]); // taken by the single flush, which blocks on the lock
    await waitFor('the flush to wait for the lock', async () => (await database.lockWaiters()) > 0);
    const queued = [heartbeats.record([3, 4]), heartbeats.record([5, 6])];
    let refused: unknown;
    try {
      await heartbeats.record([7]);
    } catch (error) {
      refused = error;
    }
    expect(refused).to.be.instanceOf(HeartbeatRejected);
    expect((refused as HeartbeatRejected).reason).to.equal('queue_full');
    expect(heartbeats.queuedIds).to.equal(4);
    await release();
    await Promise.all([first, ...queued]);
    expect(await database.userIds()).to.deep.equal([1, 2, 3, 4, 5, 6]);
    await heartbeats.close();
  });

  it('writes every queued heartbeat on close, then refuses new ones', async () => {
    const heartbeats = writer({ maxDelayMs: 60_000, maxBatchIds: 1000 });
    const pending = range(1, 20).map((id) => heartbeats.record([id]));
    expect(heartbeats.queuedIds).to.equal(20);
    await heartbeats.close();
    await Promise.all(pending);
    expect(await database.userIds()).to.deep.equal(range(1, 20));
    let refused: unknown;
    try {
      await heartbeats.record([99]);
    } catch (error) {
      refused = error;
    }
    expect((refused as HeartbeatRejected).reason).to.equal('shutting_down');
  });

  it('withdraw() drops only the given users from the queue and answers requests left with nothing', async () => {
    const heartbeats = writer({ maxDelayMs: 60_000 });
    // A batch whose only id is withdrawn has nothing left to write: its request is answered.
    const alone = heartbeats.record([2]);
    await heartbeats.withdraw([2]);
    await alone;
    expect(heartbeats.queuedIds).to.equal(0);

    const one = heartbeats.record([1]);
    const twoAndThree = heartbeats.record([2, 3, 2]);
    expect(heartbeats.queuedIds).to.equal(3);
    await heartbeats.withdraw([2]);
    expect(heartbeats.queuedIds).to.equal(2);
    await heartbeats.close();
    await Promise.all([one, twoAndThree]);
    expect(await database.userIds()).to.deep.equal([1, 3]);
  });

  describe('DirectHeartbeatWriter (HEARTBEAT_GROUP_COMMIT=false)', () => {
    it('close() waits for the writes in flight, then refuses new heartbeats', async () => {
      const heartbeats = new DirectHeartbeatWriter(database.db);
      const release = await lockPulse(database.url);
      let inFlight: Promise<void> | undefined;
      try {
        inFlight = heartbeats.record([1, 2]);
        await waitFor(
          'the write to wait for the lock',
          async () => (await database.lockWaiters()) > 0,
        );
        // What the table holds at the moment close() resolves.
        const closed = heartbeats.close().then(() => database.userIds());
        let refused: unknown;
        await heartbeats.record([3]).catch((error: unknown) => (refused = error));
        expect((refused as HeartbeatRejected).reason).to.equal('shutting_down');
        await release();
        expect(await closed).to.deep.equal([1, 2]);
        await inFlight;
      } finally {
        await release().catch(() => undefined); // already released unless the test failed
        await inFlight?.catch(() => undefined);
      }
      expect(await database.userIds()).to.deep.equal([1, 2]);
    });

    it('close() resolves at once when nothing is in flight, and more than once', async () => {
      const heartbeats = new DirectHeartbeatWriter(database.db);
      await heartbeats.record([5]);
      await heartbeats.close();
      await heartbeats.close();
      expect(await database.userIds()).to.deep.equal([5]);
    });
  });

  describe('over HTTP', () => {
    let app: TestApp;
    /** Counts the statements that write to pulse from now on (see statementCount). */
    async function countStatements() {
      await sql`CREATE TABLE write_statements (at timestamptz)`.execute(database.db);
      await sql`CREATE FUNCTION count_write() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN INSERT INTO write_statements VALUES (clock_timestamp()); RETURN NULL; END $$`.execute(
        database.db,
      );
      await sql`CREATE TRIGGER count_write AFTER INSERT ON pulse
        FOR EACH STATEMENT EXECUTE FUNCTION count_write()`.execute(database.db);
    }
    const statementCount = async () =>
      Number(
        (await sql<{ n: string }>`SELECT count(*) AS n FROM write_statements`.execute(database.db))
          .rows[0]?.n,
      );
    afterEach(async () => {
      await app.close();
    });

    it('answers 503 queue_full with Retry-After when the queue is full', async () => {
      app = await startTestApp(database, {
        HEARTBEAT_FLUSH_MAX_IDS: '1',
        HEARTBEAT_MAX_CONCURRENT_FLUSHES: '1',
        HEARTBEAT_QUEUE_MAX_IDS: '2',
      });
      const release = await lockPulse(database.url);
      const accepted = [app.post('/status/update', { user_id: 1 })];
      await waitFor(
        'the flush to wait for the lock',
        async () => (await database.lockWaiters()) > 0,
      );
      accepted.push(
        app.post('/status/update', { user_id: 2 }),
        app.post('/status/update', { user_id: 3 }),
      );
      await waitFor('two queued heartbeats', () => app.heartbeats.queuedIds === 2);
      const refused = await app.post('/status/update', { user_id: 4 });
      expect(refused.status).to.equal(503);
      expect(refused.headers.get('retry-after')).to.equal('1');
      expect(((await refused.json()) as { error: { code: string } }).error.code).to.equal(
        'queue_full',
      );
      await release();
      for (const response of await Promise.all(accepted)) expect(response.status).to.equal(200);
      expect(await database.userIds()).to.deep.equal([1, 2, 3]);
    });

    it('answers 503 write_failed to every request of a failed flush', async () => {
      await sql`ALTER TABLE pulse ADD CONSTRAINT no_13 CHECK (user_id <> 13)`.execute(database.db);
      app = await startTestApp(database, { HEARTBEAT_FLUSH_DELAY_MS: '30' });
      const [good, bad] = await Promise.all([
        app.post('/status/update', { user_id: 12 }),
        app.post('/status/update', { user_id: 13 }),
      ]);
      expect(good.status).to.equal(503);
      expect(bad.status).to.equal(503);
      expect(((await good.json()) as { error: { code: string } }).error.code).to.equal(
        'write_failed',
      );
      expect(await database.userIds()).to.deep.equal([]);
    });

    it('writes one statement per request when group commit is off', async () => {
      await countStatements();
      // The offline detector would take pool connections too: this counts the heartbeats' alone.
      app = await startTestApp(database, {
        HEARTBEAT_GROUP_COMMIT: 'false',
        OFFLINE_DETECTOR: 'false',
      });
      // While the table is locked, group commit would queue the later requests and merge them.
      const release = await lockPulse(database.url);
      const sent = range(1, 20).map((id) => app.post('/status/update', { user_id: id }));
      try {
        await waitFor(
          'every request to hold a connection or wait for one',
          async () => (await database.lockWaiters()) === 5 && database.pool.waitingCount === 15,
        );
      } finally {
        await release();
      }
      for (const response of await Promise.all(sent)) expect(response.status).to.equal(200);
      expect(await database.userIds()).to.deep.equal(range(1, 20));
      expect(await statementCount()).to.equal(20);
    });
  });
});

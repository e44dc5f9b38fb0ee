import { expect } from 'chai';
import { sql } from 'kysely';
import {
  readPresence,
  setOffline,
  sweepExpiredBatch,
  trimLastSeenBatch,
  updatePresenceSettings,
} from '../lib/store/pulse-store.ts';
import { Sweeper } from '../sweeper/sweeper.ts';
import { startTestApp } from './support/app.ts';
import { createTestDatabase, silentLogger, type TestDatabase } from './support/database.ts';

/** pulse.last_hb of each user as text (microseconds), to compare with what last seen kept. */
async function heartbeatsOf(database: TestDatabase): Promise<Map<number, string>> {
  const { rows } = await sql<{ user_id: string; at: string }>`
    SELECT user_id, last_hb::text AS at FROM pulse`.execute(database.db);
  return new Map(rows.map((r) => [Number(r.user_id), r.at]));
}

async function lastSeenOf(database: TestDatabase): Promise<Map<number, string>> {
  const { rows } = await sql<{ user_id: string; at: string }>`
    SELECT user_id, last_seen::text AS at FROM pulse_last_seen`.execute(database.db);
  return new Map(rows.map((r) => [Number(r.user_id), r.at]));
}

/** Entries 1..n in pulse_last_seen, entry i last seen i days ago less an hour. */
async function putLastSeenDaysAgo(database: TestDatabase, n: number) {
  await sql`INSERT INTO pulse_last_seen (user_id, last_seen)
    SELECT i, now() - make_interval(days => i::int, hours => -1) FROM generate_series(1, ${n}::bigint) i`.execute(
    database.db,
  );
}

/** The devices summary of anyone offline. */
const NO_DEVICES = { count: 0, kinds: [] };

describe('last seen', function () {
  this.timeout(30_000);
  let database: TestDatabase;
  beforeEach(async () => {
    database = await createTestDatabase();
  });
  afterEach(async () => {
    await database.drop();
  });

  describe('explicit offline (setOffline)', () => {
    it('removes the rows and keeps each last heartbeat, exactly, in the same statement', async () => {
      for (const [id, age] of [
        [1, 5],
        [2, 12],
        [3, 1],
      ] as const)
        await database.putRow(id, age);
      const before = await heartbeatsOf(database);
      await setOffline(database.db, [2, 1, 2, 999]); // duplicates and unknown ids are fine
      expect(await database.userIds()).to.deep.equal([3]);
      expect(await lastSeenOf(database)).to.deep.equal(
        new Map([
          [1, before.get(1)],
          [2, before.get(2)],
        ]),
      );
      await setOffline(database.db, []);
      expect(await database.userIds()).to.deep.equal([3]);
    });

    it('never moves last seen backwards', async () => {
      await sql`INSERT INTO pulse_last_seen VALUES (1, now() + interval '1 hour')`.execute(
        database.db,
      );
      const future = (await lastSeenOf(database)).get(1);
      await database.putRow(1, 0);
      await setOffline(database.db, [1]);
      expect(await database.userIds()).to.deep.equal([]);
      expect((await lastSeenOf(database)).get(1)).to.equal(future);
    });

    it('with last seen switched off, removes the rows and records nothing', async () => {
      await updatePresenceSettings(database.db, { lastSeenEnabled: false });
      await database.putRow(1, 5);
      await setOffline(database.db, [1]);
      expect(await database.userIds()).to.deep.equal([]);
      expect((await lastSeenOf(database)).size).to.equal(0);
    });

    it('the API then answers offline with the last heartbeat as last_seen', async () => {
      const app = await startTestApp(database);
      try {
        await app.post('/status/update', { user_id: 7 });
        const online = (await (await app.get('/status/7')).json()) as Record<string, unknown>;
        expect(online).to.include({ is_online: true });
        await setOffline(database.db, [7]);
        expect(await (await app.get('/status/7')).json()).to.deep.equal({
          ...online,
          is_online: false,
          devices: { count: 0, kinds: [] },
        });
        const batch = await app.post('/status/batch', [{ user_id: 7 }, { user_id: 8 }]);
        expect(await batch.json()).to.deep.equal([
          { ...online, is_online: false, devices: NO_DEVICES },
          { user_id: 8, is_online: false, last_seen: null, devices: NO_DEVICES },
        ]);
      } finally {
        await app.close();
      }
    });
  });

  describe('the sweep', () => {
    it('keeps the last heartbeat of every row it deletes, and nothing of the rows it keeps', async () => {
      for (let id = 1; id <= 40; id += 1) await database.putRow(id, id % 2 ? 120 : 1);
      const before = await heartbeatsOf(database);
      const report = await new Sweeper(database.db, silentLogger, {
        schedule: '* * * * *',
        olderThanSeconds: 30,
        batchSize: 7,
        leaseTtlSeconds: 30,
      }).sweepOnce();
      expect(report).to.include({ outcome: 'done', deleted: 20 });
      const odd = [...before].filter(([id]) => id % 2 === 1);
      expect(await lastSeenOf(database)).to.deep.equal(new Map(odd));
    });

    it('records nothing with last seen switched off', async () => {
      await updatePresenceSettings(database.db, { lastSeenEnabled: false });
      for (let id = 1; id <= 10; id += 1) await database.putRow(id, 120);
      const batch = await sweepExpiredBatch(database.db, {
        cursor: null,
        batchSize: 100,
        olderThanSeconds: 30,
      });
      expect(batch).to.deep.equal({ deleted: 10, nextCursor: '10' });
      expect((await lastSeenOf(database)).size).to.equal(0);
    });

    it('trims entries past the retention, oldest first in short batches, and keeps the rest', async () => {
      await updatePresenceSettings(database.db, { lastSeenRetentionDays: 30 });
      await putLastSeenDaysAgo(database, 100); // entries 31..100 are past 30 days
      const report = await new Sweeper(database.db, silentLogger, {
        schedule: '* * * * *',
        olderThanSeconds: 30,
        batchSize: 8,
        leaseTtlSeconds: 30,
      }).sweepOnce();
      expect(report).to.include({ outcome: 'done', lastSeenTrimmed: 70 });
      expect(report.batches).to.equal(0); // pulse was empty: every batch was a trim batch
      const left = [...(await lastSeenOf(database)).keys()].sort((a, b) => a - b);
      expect(left).to.deep.equal(Array.from({ length: 30 }, (_, i) => i + 1));
    });

    it('a trim batch deletes the oldest batchSize entries before the cutoff', async () => {
      await putLastSeenDaysAgo(database, 20);
      const before = new Date(Date.now() - 5 * 86_400_000);
      const first = await trimLastSeenBatch(database.db, { before, batchSize: 8 });
      expect(first).to.deep.equal({ deleted: 8, more: true });
      let left = [...(await lastSeenOf(database)).keys()].sort((a, b) => a - b);
      expect(left).to.deep.equal(Array.from({ length: 12 }, (_, i) => i + 1)); // 13..20 were oldest
      expect(await trimLastSeenBatch(database.db, { before, batchSize: 8 })).to.deep.equal({
        deleted: 7,
        more: false,
      });
      left = [...(await lastSeenOf(database)).keys()].sort((a, b) => a - b);
      expect(left).to.deep.equal([1, 2, 3, 4, 5]);
    });
  });

  describe('readPresence', () => {
    it('prefers the live row of a user who came back over their older last-seen entry', async () => {
      await sql`INSERT INTO pulse_last_seen VALUES (1, now() - interval '2 days'), (2, now() - interval '3 days')`.execute(
        database.db,
      );
      await database.putRow(1, 0);
      const found = await readPresence(database.db, [1, 2, 3]);
      const live = (await heartbeatsOf(database)).get(1);
      expect(found.get(1)?.online).to.equal(true);
      const { rows } = await sql<{ same: boolean }>`
        SELECT ${found.get(1)?.lastSeen?.toISOString()}::timestamptz = date_trunc('milliseconds', ${live}::timestamptz) AS same`.execute(
        database.db,
      );
      expect(rows[0]?.same).to.equal(true);
      expect(found.get(2)?.online).to.equal(false);
      expect(Date.now() - found.get(2)!.lastSeen!.getTime()).to.be.within(
        2.9 * 86_400_000,
        3.1 * 86_400_000,
      );
      expect(found.has(3)).to.equal(false);
    });
  });
});

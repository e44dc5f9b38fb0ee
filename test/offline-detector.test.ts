import { expect } from 'chai';
import { sql } from 'kysely';
import { EventRetention } from '../lib/presence/event-retention.ts';
import { OFFLINE_DETECTOR_JOB, OfflineDetector } from '../lib/presence/offline-detector.ts';
import { readJobLease } from '../lib/store/job-lease.ts';
import {
  recordHeartbeats,
  updatePresenceSettings,
  type Executor,
} from '../lib/store/pulse-store.ts';
import { createTestDatabase, silentLogger, type TestDatabase } from './support/database.ts';
import { waitFor } from './support/entry-points.ts';

interface Offline {
  user_id: string;
  reason: string;
  /** Seconds between the last heartbeat and the moment the event was logged. */
  late: number;
}

async function offlineEvents(db: Executor): Promise<Offline[]> {
  const { rows } = await sql<Offline>`
    SELECT e.user_id::text AS user_id, e.reason,
           extract(epoch FROM e.at - e.last_seen)::float8 AS late
    FROM pulse_events e WHERE NOT e.online ORDER BY e.seq`.execute(db);
  return rows;
}

const ids = (events: Offline[]) => events.map((e) => Number(e.user_id)).sort((a, b) => a - b);

describe('the offline detector', () => {
  let database: TestDatabase;
  const detectors: OfflineDetector[] = [];
  const detector = (holder: string, leaseTtlSeconds = 2) => {
    const d = new OfflineDetector(database.db, { intervalMs: 50, leaseTtlSeconds, holder });
    detectors.push(d);
    return d;
  };

  beforeEach(async () => {
    database = await createTestDatabase();
    await updatePresenceSettings(database.db, { onlineThresholdSeconds: 1 });
  });
  afterEach(async () => {
    for (const d of detectors.splice(0)) await d.stop();
    await database.drop();
  });

  it('logs each threshold crossing once, when it is due, and leaves users who keep beating', async () => {
    const a = detector('a');
    a.start();
    await waitFor('the lease', () => a.holdsLease);
    await recordHeartbeats(database.db, [1, 2, 3]);
    const beating = setInterval(() => void recordHeartbeats(database.db, [3]), 200);
    try {
      await waitFor('two offlines', async () => (await offlineEvents(database.db)).length >= 2);
      // A few more ticks: nothing is logged twice, and user 3 stays online.
      const ticks = (await a.tickOnce()).leaseHeld && (await a.tickOnce()).leaseHeld;
      expect(ticks).to.equal(true);
    } finally {
      clearInterval(beating);
    }
    const events = await offlineEvents(database.db);
    expect(ids(events)).to.deep.equal([1, 2]);
    for (const event of events) {
      expect(event.reason).to.equal('threshold');
      // Never before the threshold (1 s) passed; well within a second after it.
      expect(event.late).to.be.within(1, 2);
    }
    expect(a.scheduled, 'user 3, rescheduled at each expiry it was found refreshed').to.equal(1);
  });

  it('a new detector rebuilds its schedule from pulse: nothing missed, nothing twice', async () => {
    const first = detector('first');
    first.start();
    await waitFor('the lease', () => first.holdsLease);
    await recordHeartbeats(database.db, [1, 2]);
    await waitFor('two offlines', async () => (await offlineEvents(database.db)).length === 2);
    await first.stop();

    // Users come online while no detector runs; the next one finds them in pulse.
    await recordHeartbeats(database.db, [3, 4, 5]);
    const second = detector('second');
    second.start();
    await waitFor('five offlines', async () => (await offlineEvents(database.db)).length === 5);
    await second.tickOnce();
    expect(ids(await offlineEvents(database.db))).to.deep.equal([1, 2, 3, 4, 5]);
  });

  it('fails over: the holder is killed, the other takes the lease after its TTL and logs every crossing once', async () => {
    const a = detector('a');
    const b = detector('b');
    a.start();
    await waitFor('a holds the lease', () => a.holdsLease);
    b.start();
    const holder = async () => (await readJobLease(database.db, OFFLINE_DETECTOR_JOB))?.holder;
    expect(await holder()).to.equal('a');
    await recordHeartbeats(database.db, [1, 2, 3]);
    await waitFor('a schedules the three users', () => a.scheduled === 3);

    await a.stop({ release: false }); // a crash: the lease stays until it expires
    expect(b.holdsLease).to.equal(false);
    await recordHeartbeats(database.db, [4]);
    await waitFor('b takes over', async () => (await holder()) === 'b', { timeoutMs: 8_000 });
    await waitFor('four offlines', async () => (await offlineEvents(database.db)).length === 4, {
      timeoutMs: 8_000,
    });
    await b.tickOnce();
    const events = await offlineEvents(database.db);
    expect(ids(events)).to.deep.equal([1, 2, 3, 4]);
    expect(events.every((e) => e.reason === 'threshold')).to.equal(true);
  });
});

describe('change log retention', () => {
  let database: TestDatabase;
  beforeEach(async () => {
    database = await createTestDatabase();
  });
  afterEach(() => database.drop());

  it('creates the daily partitions ahead and drops those past event_retention_days', async () => {
    const { db } = database;
    await updatePresenceSettings(db, { eventRetentionDays: 2 });
    // Partitions for 5 and 2 days ago, each with an event.
    for (const daysAgo of [5, 2]) {
      const { rows } = await sql<{ name: string; from: string; to: string }>`
        SELECT 'pulse_events_' || to_char(d, 'YYYYMMDD') AS name, d::text AS from,
               (d + interval '1 day')::text AS to
        FROM (SELECT date_trunc('day', now() AT TIME ZONE 'UTC') - make_interval(days => ${daysAgo}) AS d) x`.execute(
        db,
      );
      const { name, from, to } = rows[0]!;
      await sql`CREATE TABLE ${sql.id(name)} PARTITION OF pulse_events
        FOR VALUES FROM (${sql.lit(`${from} UTC`)}) TO (${sql.lit(`${to} UTC`)})`.execute(db);
      await sql`INSERT INTO pulse_events (user_id, online, reason, at)
        VALUES (1, true, 'heartbeat', ${sql.lit(`${from} UTC`)}::timestamptz + interval '1 hour')`.execute(
        db,
      );
    }
    await sql`DROP TABLE ${sql.id(await partitionName(db, 7))}`.execute(db);
    await sql`INSERT INTO pulse_visibility_changes (user_id, reason, at)
      VALUES (1, 'privacy', now() - interval '61 minutes'), (2, 'rule', now() - interval '59 minutes')`.execute(
      db,
    );

    const report = await new EventRetention(db, silentLogger, {
      intervalMs: 3_600_000,
      aheadDays: 7,
    }).runOnce();
    expect(report.created).to.deep.equal([await partitionName(db, 7)]);
    expect(report.dropped).to.deep.equal([await partitionName(db, -5)]);
    expect(report.defaultRows).to.equal(0);
    const { rows } = await sql<{ n: number }>`SELECT count(*)::int AS n FROM pulse_events`.execute(
      db,
    );
    expect(rows[0]!.n, 'the event two days ago is kept').to.equal(1);
    expect(report.visibilityChangesDeleted, 'audience changes over an hour old').to.equal(1);
    const kept = await sql<{ user_id: string }>`
      SELECT user_id FROM pulse_visibility_changes`.execute(db);
    expect(kept.rows.map((r) => Number(r.user_id))).to.deep.equal([2]);
  });
});

/** The name of the partition `days` from today (UTC). */
async function partitionName(db: Executor, days: number): Promise<string> {
  const { rows } = await sql<{ name: string }>`
    SELECT 'pulse_events_' || to_char(date_trunc('day', now() AT TIME ZONE 'UTC')
                                      + make_interval(days => ${days}), 'YYYYMMDD') AS name`.execute(
    db,
  );
  return rows[0]!.name;
}

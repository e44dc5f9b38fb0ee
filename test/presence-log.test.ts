import { expect } from 'chai';
import { sql } from 'kysely';
import {
  currentEventCursor,
  expireDue,
  readEventsSince,
  type PresenceEvent,
} from '../lib/store/presence-log.ts';
import {
  recordHeartbeats,
  setOffline,
  sweepExpiredRange,
  updatePresenceSettings,
  type Executor,
} from '../lib/store/pulse-store.ts';
import { createTestDatabase, type TestDatabase } from './support/database.ts';

interface LoggedEvent {
  seq: string;
  user_id: string;
  online: boolean;
  reason: string;
}

async function allEvents(db: Executor): Promise<LoggedEvent[]> {
  const { rows } = await sql<LoggedEvent>`
    SELECT e.seq::text AS seq, e.user_id::text AS user_id, e.online, e.reason
    FROM pulse_events e ORDER BY e.seq`.execute(db);
  return rows;
}

const brief = (events: PresenceEvent[]) =>
  events.map((e) => `${e.userId} ${e.online ? 'online' : 'offline'} ${e.reason}`);

describe('the presence change log', () => {
  let database: TestDatabase;
  beforeEach(async () => {
    database = await createTestDatabase();
  });
  afterEach(() => database.drop());

  it('logs one event per transition, in the statements that cause them', async () => {
    const { db } = database;
    let cursor = await currentEventCursor(db);
    const next = async () => {
      const read = await readEventsSince(db, cursor);
      cursor = read.snapshot;
      return brief(read.events);
    };
    await recordHeartbeats(db, [1, 2]);
    expect(await next()).to.deep.equal(['1 online heartbeat', '2 online heartbeat']);
    await recordHeartbeats(db, [1, 2, 3]);
    expect(await next(), 'users already online log nothing').to.deep.equal(['3 online heartbeat']);
    await setOffline(db, [1, 4]);
    expect(await next()).to.deep.equal(['1 offline offline']);
    await setOffline(db, [1]);
    expect(await next(), 'nobody left to take offline').to.deep.equal([]);

    // Past the threshold: the detector's statement logs it, once.
    await sql`UPDATE pulse SET last_hb = now() - interval '60 seconds' WHERE user_id = 2`.execute(
      db,
    );
    const first = await expireDue(db, [2, 3]);
    expect(first.expired.map((u) => u.userId)).to.deep.equal([2]);
    expect(first.live.map((u) => u.userId)).to.deep.equal([3]);
    expect((await expireDue(db, [2])).expired, 'already offline').to.deep.equal([]);
    expect(await next()).to.deep.equal(['2 offline threshold']);

    // The sweeper logs an offline only for a row still marked online (the detector lagged).
    await sql`UPDATE pulse SET last_hb = now() - interval '60 seconds' WHERE user_id = 3`.execute(
      db,
    );
    expect(await sweepExpiredRange(db, { after: '0', upTo: '100', olderThanSeconds: 30 })).to.equal(
      2,
    );
    expect(await next()).to.deep.equal(['3 offline sweep']);

    await recordHeartbeats(db, [2]);
    const back = await readEventsSince(db, cursor);
    expect(brief(back.events)).to.deep.equal(['2 online heartbeat']);
    const { rows } = await sql<{
      last_hb: Date;
    }>`SELECT last_hb FROM pulse WHERE user_id = 2`.execute(db);
    expect(back.events[0]!.lastSeen?.toISOString()).to.equal(rows[0]!.last_hb.toISOString());
  });

  it('a reader never skips a transaction that commits after a later one', async () => {
    const { db } = database;
    const cursor = await currentEventCursor(db);
    let commitFirst!: () => void;
    const firstMayCommit = new Promise<void>((resolve) => (commitFirst = resolve));
    let firstWritten!: () => void;
    const written = new Promise<void>((resolve) => (firstWritten = resolve));
    // Transaction 1 takes its sequence value first and commits last.
    const first = db.transaction().execute(async (trx) => {
      await recordHeartbeats(trx, [10]);
      firstWritten();
      await firstMayCommit;
    });
    await written;
    await recordHeartbeats(db, [11]);

    const read1 = await readEventsSince(db, cursor);
    expect(brief(read1.events)).to.deep.equal(['11 online heartbeat']);
    commitFirst();
    await first;
    const logged = await allEvents(db);
    expect(
      logged.map((e) => e.user_id),
      'user 10 has the lower seq: "seq > last seen seq" would skip it',
    ).to.deep.equal(['10', '11']);

    const read2 = await readEventsSince(db, read1.snapshot);
    expect(brief(read2.events)).to.deep.equal(['10 online heartbeat']);
    const read3 = await readEventsSince(db, read2.snapshot);
    expect(read3.events).to.deep.equal([]);
  });

  it('under concurrent writers, a transition is logged if and only if online_since flips', async () => {
    const { db } = database;
    const users = Array.from({ length: 12 }, (_, i) => i + 1);
    const pick = () => users.filter(() => Math.random() < 0.4);
    const operations: Array<() => Promise<unknown>> = [
      () => recordHeartbeats(db, pick()),
      () => recordHeartbeats(db, pick()),
      () => setOffline(db, pick()),
      () => expireDue(db, pick()),
      () =>
        sql`UPDATE pulse SET last_hb = now() - interval '60 seconds'
            WHERE user_id = ANY(${pick()}::bigint[])`.execute(db),
      () =>
        db
          .transaction()
          .execute((trx) =>
            sweepExpiredRange(trx, { after: '0', upTo: '100', olderThanSeconds: 30 }),
          ),
    ];
    let done = 0;
    const worker = async () => {
      for (let i = 0; i < 80; i += 1) {
        const operation = operations[Math.floor(Math.random() * operations.length)]!;
        try {
          await operation();
          done += 1;
        } catch (error) {
          // Two writers locking the same rows in a different order: retried by the next operation.
          if ((error as { code?: string }).code !== '40P01') throw error;
        }
      }
    };
    await Promise.all([worker(), worker(), worker(), worker()]);
    expect(done).to.be.greaterThan(250);

    const logged = await allEvents(db);
    const { rows } = await sql<{ user_id: string; marked: boolean }>`
      SELECT user_id::text, online_since IS NOT NULL AS marked FROM pulse`.execute(db);
    const marked = new Map(rows.map((r) => [r.user_id, r.marked]));
    let transitions = 0;
    for (const user of users.map(String)) {
      const mine = logged.filter((e) => e.user_id === user);
      transitions += mine.length;
      // online, offline, online, ...: never the same twice in a row.
      mine.forEach((event, i) =>
        expect(event.online, `user ${user} event ${i}: ${JSON.stringify(mine)}`).to.equal(
          i % 2 === 0,
        ),
      );
      const lastOnline = mine.at(-1)?.online ?? false;
      expect(lastOnline, `user ${user}: last event vs pulse.online_since`).to.equal(
        marked.get(user) ?? false,
      );
    }
    expect(transitions).to.be.greaterThan(50);
  });

  it('two detectors expiring the same users at once log each offline once', async () => {
    const { db } = database;
    const users = Array.from({ length: 200 }, (_, i) => i + 1);
    await recordHeartbeats(db, users);
    await sql`UPDATE pulse SET last_hb = now() - interval '60 seconds'`.execute(db);
    const [a, b] = await Promise.all([expireDue(db, users), expireDue(db, [...users].reverse())]);
    expect(a.expired.length + b.expired.length).to.equal(200);
    const offline = (await allEvents(db)).filter((e) => !e.online);
    expect(offline.length).to.equal(200);
    expect(new Set(offline.map((e) => e.user_id)).size).to.equal(200);
  });

  it('reads through the threshold in pulse_settings, live', async () => {
    const { db } = database;
    await recordHeartbeats(db, [5]);
    await sql`UPDATE pulse SET last_hb = now() - interval '30 seconds'`.execute(db);
    expect((await expireDue(db, [5])).expired, 'under the 20 s default').to.have.length(1);
    await recordHeartbeats(db, [5]);
    await sql`UPDATE pulse SET last_hb = now() - interval '30 seconds'`.execute(db);
    await updatePresenceSettings(db, { onlineThresholdSeconds: 60 });
    const result = await expireDue(db, [5]);
    expect(result.thresholdSeconds).to.equal(60);
    expect(result.expired).to.deep.equal([]);
    expect(result.live.map((u) => u.userId)).to.deep.equal([5]);
  });
});

/**
 * Who may see whom (issue 24): the operator's rule in SQL (pulse_visible_users, here over a friends
 * table), invisible mode and hidden last seen, in every answer and stream event. A user hidden from
 * the caller must read exactly like an offline user Pulse knows nothing of.
 */
import { expect } from 'chai';
import { sql } from 'kysely';
import { startTestApp, type TestApp } from './support/app.ts';
import { createTestDatabase, type TestDatabase } from './support/database.ts';
import { SseStream } from './support/sse.ts';
import { bearer, hs256, jwtEnv, randomSecret } from './support/tokens.ts';

interface Status {
  user_id: number;
  is_online: boolean;
  last_seen: string | null;
  devices: { count: number; kinds: string[] };
}

/** The rule of docs/security.md: users see their friends; callers that are not users see all. */
async function installFriendsRule(database: TestDatabase): Promise<void> {
  await sql`CREATE TABLE friends (user_id bigint, friend_id bigint, PRIMARY KEY (user_id, friend_id))`.execute(
    database.db,
  );
  await sql`CREATE FUNCTION pulse_visible_users(viewer bigint, targets bigint[])
    RETURNS SETOF bigint LANGUAGE sql STABLE AS $$
      SELECT f.friend_id FROM friends f WHERE f.user_id = viewer AND f.friend_id = ANY(targets)
      UNION ALL
      SELECT t FROM unnest(targets) AS t WHERE viewer IS NULL
    $$`.execute(database.db);
  // Live streams learn that the rule's answer changed from the application's own trigger.
  await sql`CREATE FUNCTION friends_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      PERFORM pulse_visibility_changed(ARRAY[OLD.friend_id, NEW.friend_id]);
      RETURN NULL;
    END $$`.execute(database.db);
  await sql`CREATE TRIGGER friends_changed AFTER INSERT OR UPDATE OR DELETE ON friends
    FOR EACH ROW EXECUTE FUNCTION friends_changed()`.execute(database.db);
}

const befriend = (database: TestDatabase, a: number, b: number) =>
  sql`INSERT INTO friends VALUES (${a}, ${b})`.execute(database.db);
const unfriend = (database: TestDatabase, a: number, b: number) =>
  sql`DELETE FROM friends WHERE user_id = ${a} AND friend_id = ${b}`.execute(database.db);

/** The devices summary of anyone offline. */
const NO_DEVICES = { count: 0, kinds: [] };

/** Without its user_id: what an answer says about a user, field by field (devices too). */
const fields = ({ is_online, last_seen, devices }: Status) => ({ is_online, last_seen, devices });
const UNKNOWN = { is_online: false, last_seen: null, devices: NO_DEVICES };

describe('who may see whom: the visibility rule and privacy', () => {
  let database: TestDatabase;
  let app: TestApp;
  const secret = randomSecret();
  const minter = hs256(secret);
  const streams: SseStream[] = [];
  let tokens: Record<number, Record<string, string>>;

  const statusOf = async (viewer: number, id: number) =>
    (await (await app.get(`/status/${id}`, tokens[viewer])).json()) as Status;
  const batchOf = async (headers: Record<string, string>, ids: number[]) =>
    (await (
      await app.post(
        '/status/batch',
        ids.map((id) => ({ user_id: id })),
        headers,
      )
    ).json()) as Status[];
  const privacy = (viewer: number, body: unknown) =>
    fetch(`${app.baseUrl}/status/privacy`, {
      method: 'PUT',
      headers: { 'content-type': 'application/json', ...tokens[viewer] },
      body: JSON.stringify(body),
    });

  before(async () => {
    database = await createTestDatabase();
    tokens = {};
    for (const id of [1, 2, 3, 4, 5]) tokens[id] = bearer(await minter.user(id));
  });
  beforeEach(async () => {
    await sql`TRUNCATE pulse, pulse_last_seen, pulse_privacy`.execute(database.db);
  });
  afterEach(async () => {
    for (const stream of streams.splice(0)) stream.close();
    await app.close();
  });
  after(async () => {
    await database.drop();
  });

  it('without a rule, everyone sees everyone (as before)', async () => {
    app = await startTestApp(database, jwtEnv(secret));
    await database.putRow(2, 1);
    expect(fields(await statusOf(1, 2))).to.deep.include({ is_online: true });
  });

  describe('with a rule over a friends table', () => {
    before(async () => {
      await installFriendsRule(database);
    });
    beforeEach(async () => {
      await sql`TRUNCATE friends`.execute(database.db);
    });
    after(async () => {
      await sql`DROP FUNCTION pulse_visible_users(bigint, bigint[])`.execute(database.db);
      await sql`DROP TABLE friends`.execute(database.db);
      await sql`DROP FUNCTION friends_changed()`.execute(database.db);
    });

    it('hides non-friends in GET and batch answers exactly like unknown users; a caller sees themselves; a gateway sees what the rule gives it', async () => {
      app = await startTestApp(database, jwtEnv(secret));
      await befriend(database, 1, 2);
      await database.putRow(1, 1);
      await database.putRow(2, 1);
      await database.putRow(3, 1); // online, not a friend
      await sql`INSERT INTO pulse_last_seen VALUES (4, now() - interval '1 hour')`.execute(
        database.db,
      ); // offline with a last seen, not a friend

      expect(fields(await statusOf(1, 2))).to.deep.include({ is_online: true });
      for (const hidden of [3, 4]) {
        expect(fields(await statusOf(1, hidden)), `user ${hidden}`).to.deep.equal(UNKNOWN);
      }
      const batch = await batchOf(tokens[1]!, [2, 3, 4, 99]);
      expect(batch.map((s) => s.user_id)).to.deep.equal([2, 3, 4, 99]);
      expect(batch[0]!.is_online).to.equal(true);
      expect(batch.slice(1).map(fields)).to.deep.equal([UNKNOWN, UNKNOWN, UNKNOWN]);
      // Field for field the same as a user Pulse has never seen, including the keys present.
      expect(Object.keys(batch[1]!)).to.deep.equal(Object.keys(batch[3]!));
      expect(fields(await statusOf(1, 1))).to.deep.include({ is_online: true });
      // User 2 is not friends with 1 (the rule is one-way here).
      expect(fields(await statusOf(2, 1))).to.deep.equal(UNKNOWN);

      const gateway = bearer(await minter.gateway());
      const all = await batchOf(gateway, [2, 3, 4]);
      expect(all.map((s) => s.is_online)).to.deep.equal([true, true, false]);
      expect(all[2]!.last_seen).to.be.a('string');
    });

    it("a stream's snapshot and events obey the rule: unfriended stops appearing online within one read of the log, befriended appears", async () => {
      app = await startTestApp(database, jwtEnv(secret, { STREAM_POLL_INTERVAL_MS: '100' }));
      await befriend(database, 1, 2);
      await database.putRow(2, 1);
      await database.putRow(3, 1);
      const hb = setInterval(() => {
        void database.putRow(2, 0);
        void database.putRow(3, 0);
      }, 300);
      try {
        const stream = await SseStream.open(`${app.baseUrl}/status/stream?watch=2,3`, tokens[1]);
        streams.push(stream);
        const snapshot = await stream.next<Status[]>();
        expect(snapshot.event).to.equal('snapshot');
        expect(snapshot.data[0]!.is_online).to.equal(true);
        expect(fields(snapshot.data[1]!)).to.deep.equal(UNKNOWN);

        await unfriend(database, 1, 2);
        const gone = await stream.next<Status>();
        expect(gone).to.deep.equal({
          event: 'change',
          data: { user_id: 2, is_online: false, last_seen: null, devices: NO_DEVICES },
        });

        await befriend(database, 1, 3);
        const shown = await stream.next<Status>();
        expect(shown.event).to.equal('change');
        expect(shown.data).to.deep.include({ user_id: 3, is_online: true });
        expect(shown.data.last_seen).to.be.a('string');
        expect(stream.unread).to.deep.equal([]);
      } finally {
        clearInterval(hb);
      }
    });
    it('never tells a watcher the comings and goings of a user it may not see, and shows them once it may', async () => {
      app = await startTestApp(database, jwtEnv(secret, { STREAM_POLL_INTERVAL_MS: '100' }));
      await befriend(database, 1, 2);
      expect((await privacy(2, { invisible: true })).status).to.equal(200);
      const stream = await SseStream.open(`${app.baseUrl}/status/stream?watch=2,3`, tokens[1]);
      streams.push(stream);
      expect((await stream.next<Status[]>()).data.map(fields)).to.deep.equal([UNKNOWN, UNKNOWN]);

      const offline = (id: number) =>
        fetch(`${app.baseUrl}/status/offline`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', ...tokens[id] },
          body: JSON.stringify({ user_id: id }),
        });
      // 2 is invisible, 3 is no friend of 1: online, offline, online again, all in the log.
      const logged = async () =>
        (
          await sql<{ n: number }>`
            SELECT count(*)::int AS n FROM pulse_events WHERE user_id IN (2, 3)`.execute(
            database.db,
          )
        ).rows[0]!.n;
      const before = await logged();
      for (const id of [2, 3]) await database.putRow(id, 0);
      await new Promise((resolve) => setTimeout(resolve, 300));
      for (const id of [2, 3]) expect((await offline(id)).status).to.equal(200);
      await new Promise((resolve) => setTimeout(resolve, 300));
      for (const id of [2, 3]) await database.putRow(id, 0);
      expect((await logged()) - before).to.equal(6);
      await new Promise((resolve) => setTimeout(resolve, 500));
      expect(stream.unread).to.deep.equal([]);

      await privacy(2, { invisible: false });
      const shown = await stream.next<Status>();
      expect(shown.data).to.deep.include({ user_id: 2, is_online: true });
      await befriend(database, 1, 3);
      expect((await stream.next<Status>()).data).to.deep.include({ user_id: 3, is_online: true });
      await new Promise((resolve) => setTimeout(resolve, 300));
      expect(stream.unread).to.deep.equal([]);
    });
  });

  describe('invisible mode and hidden last seen', () => {
    it('are set by the user themselves through the API, and kept in the database', async () => {
      app = await startTestApp(database, jwtEnv(secret));
      const set = await privacy(5, { invisible: true });
      expect(set.status).to.equal(200);
      expect(await set.json()).to.deep.equal({
        user_id: 5,
        invisible: true,
        hide_last_seen: false,
      });
      const read = await app.get('/status/privacy', tokens[5]);
      expect(await read.json()).to.deep.equal({
        user_id: 5,
        invisible: true,
        hide_last_seen: false,
      });
      const { rows } = await sql<{ invisible: boolean }>`
        SELECT invisible FROM pulse_privacy WHERE user_id = 5`.execute(database.db);
      expect(rows).to.deep.equal([{ invisible: true }]);
      // Another user's settings: only a gateway may.
      expect((await privacy(5, { user_id: 4, invisible: true })).status).to.equal(403);
      expect((await privacy(5, {})).status).to.equal(400);
      expect((await privacy(5, { invisible: 'yes' })).status).to.equal(400);
    });

    it('an invisible user reads as offline to others, last seen frozen when they went invisible, while their heartbeats go on', async () => {
      app = await startTestApp(database, jwtEnv(secret));
      const beat = () => app.post('/status/update', { user_id: 5 }, tokens[5]);
      expect((await beat()).status).to.equal(200);
      await privacy(5, { invisible: true });
      const { rows } = await sql<{ since: Date }>`
        SELECT invisible_since AS since FROM pulse_privacy WHERE user_id = 5`.execute(database.db);
      expect((await beat()).status).to.equal(200);
      const seen = await statusOf(1, 5);
      expect(seen.is_online).to.equal(false);
      expect(new Date(seen.last_seen!).getTime()).to.be.at.most(rows[0]!.since.getTime());
      // The heartbeat was written: the row is newer than what others are shown.
      expect(await database.ageOf(5)).to.be.a('number');

      await privacy(5, { hide_last_seen: true });
      expect(fields(await statusOf(1, 5))).to.deep.equal(UNKNOWN);
      await privacy(5, { invisible: false, hide_last_seen: false });
      expect(fields(await statusOf(1, 5))).to.deep.include({ is_online: true });
    });

    it("a watcher's stream shows a user going invisible as going offline", async () => {
      app = await startTestApp(database, jwtEnv(secret, { STREAM_POLL_INTERVAL_MS: '100' }));
      await database.putRow(5, 0);
      const hb = setInterval(() => void database.putRow(5, 0), 300);
      try {
        const stream = await SseStream.open(`${app.baseUrl}/status/stream?watch=5`, tokens[1]);
        streams.push(stream);
        expect((await stream.next<Status[]>()).data[0]!.is_online).to.equal(true);
        await privacy(5, { invisible: true, hide_last_seen: true });
        expect(await stream.next<Status>()).to.deep.equal({
          event: 'change',
          data: { user_id: 5, is_online: false, last_seen: null, devices: NO_DEVICES },
        });
      } finally {
        clearInterval(hb);
      }
    });
  });
});

/**
 * Offline is final until a newer heartbeat (issue 22): an explicit offline cannot be undone by a
 * heartbeat that reached the API before it, whether that beat still waits in the group-commit queue
 * or is being written when the offline arrives. A trigger holds chosen beats inside their statement
 * (on an advisory lock the test owns) so that each race is played in the order that used to lose.
 */
import { expect } from 'chai';
import { sql } from 'kysely';
import pg from 'pg';
import { startTestApp, type TestApp } from './support/app.ts';
import { createTestDatabase, type TestDatabase } from './support/database.ts';
import { waitFor } from './support/entry-points.ts';

const GATE = 4242;
/** Beats of these users wait at the gate, inside their statement, before touching any row. */
const GATED_FROM = 900;

describe('explicit offline against earlier heartbeats', () => {
  let database: TestDatabase;
  let app: TestApp | undefined;
  let gate: pg.Client | undefined;

  before(async () => {
    database = await createTestDatabase();
    await sql`CREATE FUNCTION wait_at_gate() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        IF NEW.user_id >= ${sql.lit(GATED_FROM)} THEN PERFORM pg_advisory_xact_lock_shared(${sql.lit(GATE)}); END IF;
        RETURN NEW;
      END $$`.execute(database.db);
    await sql`CREATE TRIGGER wait_at_gate BEFORE INSERT ON pulse
      FOR EACH ROW EXECUTE FUNCTION wait_at_gate()`.execute(database.db);
  });
  afterEach(async () => {
    await gate?.end();
    gate = undefined;
    await app?.close();
    app = undefined;
  });
  after(async () => {
    await database.drop();
  });

  /** Closes the gate; the returned function opens it. */
  async function closeGate(): Promise<() => Promise<void>> {
    const client = new pg.Client({ connectionString: database.url });
    await client.connect();
    await client.query('SELECT pg_advisory_lock($1)', [GATE]);
    gate = client;
    return async () => {
      await client.query('SELECT pg_advisory_unlock($1)', [GATE]);
    };
  }
  const beatWaitsAtGate = () =>
    waitFor('a heartbeat statement waiting at the gate', async () => {
      return (await database.lockWaiters()) > 0;
    });

  it('drops a beat still queued when the offline arrives: the flush after it does not bring the user back', async () => {
    app = await startTestApp(database, {
      HEARTBEAT_MAX_CONCURRENT_FLUSHES: '1',
      OFFLINE_DETECTOR: 'false',
    });
    await database.putRow(5, 0);
    const openGate = await closeGate();
    // The one flush allowed is held at the gate, so user 5's beat stays queued behind it.
    const held = app.post('/status/update', { user_id: GATED_FROM + 1 });
    await beatWaitsAtGate();
    const beat = app.post('/status/update', { user_id: 5 });
    await waitFor('the beat of user 5 queued', () => app!.heartbeats.queuedIds === 1);

    const offline = await app.post('/status/offline', { user_id: 5 });
    expect(offline.status).to.equal(200);
    expect(app.heartbeats.queuedIds, 'queued ids after the offline').to.equal(0);
    await openGate();
    expect((await held).status).to.equal(200);
    expect((await beat).status, 'the earlier beat is answered as written').to.equal(200);
    expect(await database.ageOf(5), 'user 5 after the queue drained').to.equal(undefined);
    expect(await database.ageOf(GATED_FROM + 1)).to.be.a('number');
  });

  for (const groupCommit of ['true', 'false']) {
    it(`orders the offline after a flush in flight that holds an earlier beat (group commit ${groupCommit})`, async () => {
      app = await startTestApp(database, {
        HEARTBEAT_GROUP_COMMIT: groupCommit,
        OFFLINE_DETECTOR: 'false',
      });
      const user = GATED_FROM + 2;
      await database.putRow(user, 0);
      const openGate = await closeGate();
      const held = app.post('/status/update', { user_id: user });
      await beatWaitsAtGate();

      let answered = false;
      const offline = app.post('/status/offline', { user_id: user }).then((response) => {
        answered = true;
        return response;
      });
      // Written at once, the DELETE would answer in milliseconds and the held upsert would then
      // insert the row again; ordered after the held statement, it cannot answer before the gate.
      await Promise.race([offline, new Promise((resolve) => setTimeout(resolve, 1_000))]);
      expect(answered, 'the offline answered while an earlier beat was being written').to.equal(
        false,
      );
      await openGate();
      expect((await held).status).to.equal(200);
      expect((await offline).status).to.equal(200);
      expect(await database.ageOf(user), 'the user after both').to.equal(undefined);
    });
  }

  it('a heartbeat after the offline brings the user back', async () => {
    app = await startTestApp(database, { OFFLINE_DETECTOR: 'false' });
    await database.putRow(6, 0);
    expect((await app.post('/status/offline', { user_id: 6 })).status).to.equal(200);
    expect(await database.ageOf(6)).to.equal(undefined);
    expect((await app.post('/status/update', { user_id: 6 })).status).to.equal(200);
    expect(await database.ageOf(6)).to.be.a('number');
  });
});

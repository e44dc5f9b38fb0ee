import { expect } from 'chai';
import { startTestApp, type TestApp } from './support/app.ts';
import { createTestDatabase, type TestDatabase } from './support/database.ts';
import { waitFor } from './support/entry-points.ts';
import { expectError } from './support/http.ts';
import { SseStream } from './support/sse.ts';

/** POST /status/offline?grace_ms=: what a page going away sends (a reload cancels it). */
describe('offline after a grace', () => {
  let database: TestDatabase;
  let app: TestApp;
  const online = async (id: number) =>
    ((await (await app.get(`/status/${id}`)).json()) as { is_online: boolean }).is_online;

  before(async () => {
    database = await createTestDatabase();
    app = await startTestApp(database);
  });
  after(async () => {
    await app.close();
    await database.drop();
  });

  it('answers 202 at once, and takes the user offline once the grace is over', async () => {
    await app.post('/status/update', { user_id: 1 });
    const answer = await app.post('/status/offline?grace_ms=400', { user_id: 1 });
    expect(answer.status).to.equal(202);
    expect(await answer.json()).to.deep.equal({ status: 'accepted' });
    expect(await online(1), 'during the grace').to.equal(true);
    await waitFor('user 1 offline', async () => !(await online(1)));
    expect(await database.ageOf(1)).to.equal(undefined);
  });

  it('is cancelled by a heartbeat during the grace (a reloaded page), even from another process', async () => {
    const other = await startTestApp(database);
    try {
      await app.post('/status/update', [{ user_id: 2 }, { user_id: 3 }]);
      // A grace long enough for the other process's beat to land in it on a loaded machine.
      const answer = await app.post('/status/offline?grace_ms=2500', [
        { user_id: 2 },
        { user_id: 3 },
      ]);
      expect(await answer.json()).to.deep.equal({ status: 'accepted', accepted: 2 });
      await other.post('/status/update', { user_id: 2 }); // user 2 came back; user 3 did not
      await waitFor('user 3 offline', async () => !(await online(3)));
      expect(await online(2)).to.equal(true);
      expect(await database.ageOf(2)).to.be.below(5);
    } finally {
      await other.close();
    }
  });

  it("is not cancelled by the held beats of the leaving page's own stream, and a new stream's first beat still cancels it", async () => {
    // Threshold 3 s: a held stream beats every second, so a 2.5 s grace sees at least two beats.
    const holding = await startTestApp(database, { ONLINE_THRESHOLD_SECONDS: '3' });
    const open = () => SseStream.open(`${holding.baseUrl}/status/stream?hold=true&user_id=7`);
    try {
      const leavingPage = await open();
      await leavingPage.next();
      const asked = await holding.post('/status/offline?grace_ms=2500', { user_id: 7 });
      expect(asked.status).to.equal(202);
      await waitFor(
        'user 7 offline although its stream is still open',
        async () => (await database.ageOf(7)) === undefined,
      );
      leavingPage.close();

      // A reload: the new page's stream beats at once, which cancels the offline.
      const before = await open();
      await before.next();
      expect((await holding.post('/status/offline?grace_ms=1500', { user_id: 7 })).status).to.equal(
        202,
      );
      before.close();
      const reloaded = await open();
      await reloaded.next();
      await new Promise((resolve) => setTimeout(resolve, 2_000));
      expect(await database.ageOf(7), 'back after the reload').to.be.a('number');
      reloaded.close();
    } finally {
      await holding.close();
    }
  });

  it('applies what is pending when the process stops, to users quiet since it was asked', async () => {
    const stopping = await startTestApp(database);
    await stopping.post('/status/update', { user_id: 4 });
    expect((await stopping.post('/status/offline?grace_ms=10000', { user_id: 4 })).status).to.equal(
      202,
    );
    await stopping.close();
    expect(await database.ageOf(4)).to.equal(undefined);
  });

  it('refuses a grace that is not an integer from 0 to 10000', async () => {
    for (const grace of ['abc', '-1', '10001', '1.5']) {
      await expectError(
        await app.post(`/status/offline?grace_ms=${grace}`, { user_id: 5 }),
        400,
        'invalid_request',
      );
    }
    expect((await app.post('/status/offline?grace_ms=0', { user_id: 5 })).status).to.equal(200);
  });
});

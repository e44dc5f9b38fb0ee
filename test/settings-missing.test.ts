/**
 * A missing settings row (issue 22): with pulse_settings' row deleted, the online rule has no
 * threshold. The API must say so (not ready, 503 settings_missing, a log line) rather than answer
 * that everyone is offline; npm run migrate puts the row back.
 */
import { expect } from 'chai';
import { sql } from 'kysely';
import { restoreSettingsRow } from '../lib/store/pulse-store.ts';
import { startTestApp, type TestApp } from './support/app.ts';
import { createTestDatabase, type TestDatabase } from './support/database.ts';
import { waitFor } from './support/entry-points.ts';
import { captureLog } from './support/log-capture.ts';
import { SseStream } from './support/sse.ts';

interface LogLine {
  level: number;
  msg: string;
  code?: string;
  refused?: number;
}

describe('a missing pulse_settings row', () => {
  let database: TestDatabase;
  let app: TestApp;
  const log = captureLog<LogLine>('info');

  before(async () => {
    database = await createTestDatabase();
    app = await startTestApp(database, {}, log.logger);
  });
  after(async () => {
    await app.close();
    await database.drop();
  });

  const errorOf = async (response: Response) => ({
    status: response.status,
    code: ((await response.json()) as { error: { code: string } }).error.code,
    retryAfter: response.headers.get('retry-after'),
  });
  const refused = { status: 503, code: 'settings_missing', retryAfter: '5' };

  it('is not ready, refuses reads with 503 settings_missing, and says so once in the log', async () => {
    await database.putRow(1, 0);
    await database.putRow(2, 0);
    expect((await app.get('/readyz')).status).to.equal(200);
    await sql`DELETE FROM pulse_settings`.execute(database.db);

    const readyz = await app.get('/readyz');
    expect(readyz.status).to.equal(503);
    expect(((await readyz.json()) as { error: { message: string } }).error.message).to.equal(
      'pulse_settings has no row (id = 1): run npm run migrate to restore it',
    );
    // Not "offline": user 1 beats, and nothing may claim otherwise.
    expect(await errorOf(await app.get('/status/1'))).to.deep.equal(refused);
    expect(
      await errorOf(await app.post('/status/batch', [{ user_id: 1 }, { user_id: 2 }])),
    ).to.deep.equal(refused);
    expect(await errorOf(await app.get('/status/stream?watch=1,2'))).to.deep.equal(refused);

    const lines = log.lines.filter((line) => line.code === 'settings_missing');
    expect(lines, 'log lines about the missing row').to.have.length(1);
    expect(lines[0]!.msg).to.include('pulse_settings has no row (id = 1): run npm run migrate');
    expect(lines[0]!.level).to.equal(50); // error
  });

  it('reads and readiness come back once npm run migrate restores the row', async () => {
    expect(await restoreSettingsRow(database.db)).to.equal(true);
    expect(await restoreSettingsRow(database.db), 'a row already there').to.equal(false);
    await database.putRow(1, 0);
    expect((await app.get('/readyz')).status).to.equal(200);
    const status = (await (await app.get('/status/1')).json()) as { is_online: boolean };
    expect(status.is_online).to.equal(true);
    const stream = await SseStream.open(`${app.baseUrl}/status/stream?watch=1`);
    try {
      expect((await stream.next<Array<{ is_online: boolean }>>()).data[0]!.is_online).to.equal(
        true,
      );
    } finally {
      stream.close();
    }
  });

  it('an open stream fed by the log gets no change: the offline detector cannot expire anyone without a threshold', async () => {
    const app = await startTestApp(database, {
      STREAM_POLL_INTERVAL_MS: '100',
      OFFLINE_DETECTOR_INTERVAL_MS: '50',
    });
    await database.putRow(1, 19); // due for the detector within a second, were the threshold known
    const stream = await SseStream.open(`${app.baseUrl}/status/stream?watch=1`);
    try {
      expect((await stream.next<Array<{ is_online: boolean }>>()).data[0]!.is_online).to.equal(
        true,
      );
      await sql`DELETE FROM pulse_settings`.execute(database.db);
      await new Promise((resolve) => setTimeout(resolve, 2_000));
      expect(stream.unread, 'events after the row was deleted').to.deep.equal([]);
      const { rows } = await sql<{ n: number }>`
        SELECT count(*)::int AS n FROM pulse_events WHERE user_id = 1 AND NOT online`.execute(
        database.db,
      );
      expect(rows[0]!.n, 'offline events logged').to.equal(0);
    } finally {
      stream.close();
      await restoreSettingsRow(database.db);
      await app.close();
    }
  });

  it("an open stream's polls (STREAM_CHANGE_SOURCE=poll) fail instead of telling its watchers everyone went offline", async () => {
    const own = captureLog<LogLine>('info');
    const polled = await startTestApp(
      database,
      { STREAM_POLL_INTERVAL_MS: '100', STREAM_CHANGE_SOURCE: 'poll' },
      own.logger,
    );
    await database.putRow(1, 0);
    const stream = await SseStream.open(`${polled.baseUrl}/status/stream?watch=1`);
    try {
      const snapshot = await stream.next<Array<{ is_online: boolean }>>();
      expect(snapshot.data[0]!.is_online).to.equal(true);
      await sql`DELETE FROM pulse_settings`.execute(database.db);
      await waitFor('a poll refused for the missing row', () =>
        own.lines.some((line) => line.code === 'settings_missing'),
      );
      expect(stream.unread, 'events after the row was deleted').to.deep.equal([]);
    } finally {
      stream.close();
      await restoreSettingsRow(database.db);
      await polled.close();
    }
  });
});

import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createConnection } from 'node:net';
import { Writable } from 'node:stream';
import { expect } from 'chai';
import { sql } from 'kysely';
import { createLogger } from '../lib/infra/logger.ts';
import { recordHeartbeats, setOffline } from '../lib/store/pulse-store.ts';
import { freePort } from '../dev/embedded-postgres.ts';
import { startTestApp, type TestApp } from './support/app.ts';
import { waitFor } from './support/entry-points.ts';
import { metricValue } from './support/metrics.ts';
import { createTestDatabase, type TestDatabase } from './support/database.ts';
import { expectError } from './support/http.ts';
import { SseStream } from './support/sse.ts';
import { bearer, hs256, jwtEnv, randomSecret } from './support/tokens.ts';

interface Status {
  user_id: number;
  is_online: boolean;
  last_seen: string | null;
}

/**
 * Lets real time pass when time is what a test is about (outlasting a threshold or a timeout, or
 * pacing a loop): never to wait for something to happen (waitFor does that).
 */
const waitOut = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Change-detection statements the app has run so far (its own progress counter, on /metrics). */
async function polls(app: TestApp): Promise<number> {
  const text = await (await app.get('/metrics')).text();
  return metricValue(
    text,
    'pulse_change_detection_statement_duration_seconds_count{kind="detect",outcome="ok"}',
  );
}

/** A small threshold and a fast poll keep these tests in seconds. */
const FAST = {
  ONLINE_THRESHOLD_SECONDS: '2',
  STREAM_POLL_INTERVAL_MS: '100',
  STREAM_KEEPALIVE_SECONDS: '1',
  HEARTBEAT_FLUSH_DELAY_MS: '1',
};

/** The devices summary of a user online on one device that named none, and of anyone offline. */
const ONE_DEVICE = { count: 1, kinds: [] };
const NO_DEVICES = { count: 0, kinds: [] };

describe('GET /status/stream', () => {
  let database: TestDatabase;
  const apps: TestApp[] = [];
  const streams: SseStream[] = [];

  async function start(env: Record<string, string> = {}): Promise<TestApp> {
    const app = await startTestApp(database, { ...FAST, ...env });
    apps.push(app);
    return app;
  }
  async function open(app: TestApp, query: string, headers: Record<string, string> = {}) {
    const stream = await SseStream.open(`${app.baseUrl}/status/stream${query}`, headers);
    streams.push(stream);
    return stream;
  }

  /** The last seen the database holds for a user (as every status row says it), or null. */
  async function seen(userId: number): Promise<string | null> {
    const { rows } = await sql<{ last_seen: Date | null }>`
      SELECT coalesce(
        (SELECT last_hb FROM pulse WHERE user_id = ${userId}),
        (SELECT last_seen FROM pulse_last_seen WHERE user_id = ${userId})) AS last_seen`.execute(
      database.db,
    );
    return rows[0]?.last_seen?.toISOString() ?? null;
  }

  beforeEach(async () => {
    database = await createTestDatabase();
  });
  afterEach(async () => {
    for (const stream of streams.splice(0)) stream.close();
    for (const app of apps.splice(0)) await app.close();
    await database.drop();
  });

  it('sends a snapshot as POST /status/batch answers it, then one change per transition', async () => {
    const app = await start();
    await database.putRow(1, 0);
    const stream = await open(app, '?watch=1,2,2');
    expect(stream.response.status).to.equal(200);
    expect(stream.response.headers.get('content-type')).to.match(/^text\/event-stream/);
    expect(stream.response.headers.get('cache-control')).to.match(/no-store/);

    const snapshot = await stream.next<Status[]>();
    const batch = await (
      await app.post('/status/batch', [{ user_id: 1 }, { user_id: 2 }, { user_id: 2 }])
    ).json();
    expect(snapshot).to.deep.equal({ event: 'snapshot', data: batch });
    expect(snapshot.data).to.deep.equal([
      { user_id: 1, is_online: true, last_seen: await seen(1), devices: ONE_DEVICE },
      { user_id: 2, is_online: false, last_seen: null, devices: NO_DEVICES },
      { user_id: 2, is_online: false, last_seen: null, devices: NO_DEVICES },
    ]);
    expect(stream.retries.length).to.be.greaterThan(0);

    await app.post('/status/update', { user_id: 2 });
    expect(await stream.next()).to.deep.equal({
      event: 'change',
      data: { user_id: 2, is_online: true, last_seen: await seen(2), devices: ONE_DEVICE },
    });
    await app.post('/status/update', { user_id: 2 }); // still online: no event
    await app.post('/status/offline', { user_id: 2 });
    expect(await stream.next()).to.deep.equal({
      event: 'change',
      data: { user_id: 2, is_online: false, last_seen: await seen(2), devices: NO_DEVICES },
    });

    // User 1 crosses the threshold without any request: offline by the database clock.
    await database.putRow(1, 1.5);
    const crossing = Date.now() + 500;
    expect(await stream.next()).to.deep.equal({
      event: 'change',
      data: { user_id: 1, is_online: false, last_seen: await seen(1), devices: NO_DEVICES },
    });
    expect(Date.now()).to.be.at.least(crossing - 50);
    await stream.until(() => stream.comments.includes('keep-alive'), 'a keep-alive comment');
    expect(stream.unread).to.deep.equal([]);
  });

  it('gets every change that happens right after its snapshot, exactly once', async () => {
    // A slow poll: the change lands before the stream's first poll, which must still report it.
    const app = await start({ STREAM_POLL_INTERVAL_MS: '1000', ONLINE_THRESHOLD_SECONDS: '20' });
    for (let round = 0; round < 2; round += 1) {
      const stream = await open(app, '?watch=7');
      const { data } = await stream.next<Status[]>();
      const wasOnline = data[0]!.is_online;
      if (wasOnline) await app.post('/status/offline', { user_id: 7 });
      else await app.post('/status/update', { user_id: 7 });
      expect(await stream.next()).to.deep.equal({
        event: 'change',
        data: {
          user_id: 7,
          is_online: !wasOnline,
          last_seen: await seen(7),
          devices: wasOnline ? NO_DEVICES : ONE_DEVICE,
        },
      });
      // Two more polls (the feed's own counter): nothing more may come.
      const after = (await polls(app)) + 2;
      await waitFor('two more polls', async () => (await polls(app)) >= after);
      expect(stream.unread).to.deep.equal([]);
      stream.close();
    }
  });

  it('delivers a change made through API process A to a stream held by API process B', async () => {
    const a = await start();
    const b = await start();
    const stream = await open(b, '?watch=10,11');
    await stream.next();
    await a.post('/status/update', [{ user_id: 11 }]);
    expect(await stream.next()).to.deep.equal({
      event: 'change',
      data: { user_id: 11, is_online: true, last_seen: await seen(11), devices: ONE_DEVICE },
    });
    await a.post('/status/offline', [{ user_id: 11 }, { user_id: 10 }]);
    expect(await stream.next()).to.deep.equal({
      event: 'change',
      data: { user_id: 11, is_online: false, last_seen: await seen(11), devices: NO_DEVICES },
    });
  });

  it('keeps its caller online with no request for several thresholds, then lets it expire', async () => {
    const a = await start();
    const b = await start();
    const watcher = await open(b, '?watch=50');
    expect((await watcher.next()).data).to.deep.equal([
      { user_id: 50, is_online: false, last_seen: null, devices: NO_DEVICES },
    ]);

    const holder = await open(a, '?hold=true&user_id=50');
    expect((await holder.next()).data).to.deep.equal([]);
    const online = await watcher.next<Status>();
    expect(online).to.deep.include({ event: 'change' });
    expect(online.data).to.deep.include({ user_id: 50, is_online: true });
    // A held user's last seen moves with every held beat: a recent heartbeat.
    expect(Date.now() - Date.parse(String(online.data.last_seen))).to.be.within(-5_000, 5_000);
    // Three thresholds (2 s each) with no request from the client: online all along.
    const until = Date.now() + 6_000;
    while (Date.now() < until) {
      const age = await database.ageOf(50);
      expect(age, 'seconds since the last held heartbeat').to.be.below(2);
      await waitOut(250);
    }
    expect(watcher.unread).to.deep.equal([]);

    holder.close();
    const closed = Date.now();
    expect(await watcher.next(6_000)).to.deep.equal({
      event: 'change',
      data: { user_id: 50, is_online: false, last_seen: await seen(50), devices: NO_DEVICES },
    });
    // About one threshold after the stream closed: the last held beat was at most a third ago.
    expect((Date.now() - closed) / 1000).to.be.within(1.0, 3.5);
    // The change log says why: the stream's held presence brought the user online.
    const { rows } = await sql<{ online: boolean; reason: string }>`
      SELECT online, reason FROM pulse_events WHERE user_id = 50 ORDER BY seq`.execute(database.db);
    expect(rows).to.deep.equal([
      { online: true, reason: 'held' },
      { online: false, reason: 'threshold' },
    ]);
  });

  it('holds one row for a user with several streams, and stops when the last one closes', async () => {
    const app = await start();
    const first = await open(app, '?hold=true&user_id=60');
    const second = await open(app, '?hold=true&user_id=60');
    await first.next();
    await second.next();
    first.close();
    await waitOut(2_500); // more than a threshold: the second stream still holds the user
    expect(await database.ageOf(60)).to.be.below(2);
    second.close();
    await waitFor(
      'the row to age past the threshold',
      async () => (await database.ageOf(60))! > 2,
      {
        timeoutMs: 10_000,
      },
    );
  });

  it('answers bad parameters with the usual JSON errors before any stream starts', async () => {
    const app = await start({ BATCH_MAX_IDS: '3' });
    await expectError(await app.get('/status/stream?watch=1,x'), 400, 'invalid_user_id');
    await expectError(await app.get('/status/stream?watch=0'), 400, 'invalid_user_id');
    await expectError(await app.get('/status/stream?watch=1,,2'), 400, 'invalid_user_id');
    await expectError(await app.get('/status/stream?watch=1,2,3,4'), 413, 'too_many_ids');
    await expectError(
      await app.get('/status/stream?hold=true&user_id=abc'),
      400,
      'invalid_user_id',
    );
    await expectError(
      await app.get('/status/stream?hold=true&user_id=1&user_id=2'),
      400,
      'invalid_user_id',
    );
    // Holding is asked for explicitly, and only in a way that can be done.
    for (const query of ['hold=yes', 'hold=1', 'hold=true&hold=true', 'user_id=1', 'hold=true']) {
      await expectError(await app.get(`/status/stream?${query}`), 400, 'invalid_request');
    }
    expect(await database.ageOf(1)).to.equal(undefined);
    const stream = await open(app, '?watch=1&watch=2');
    expect((await stream.next<Status[]>()).data.map((s) => s.user_id)).to.deep.equal([1, 2]);
  });

  it('POST /status/offline validates like a heartbeat', async () => {
    const app = await start({ BATCH_MAX_IDS: '2' });
    await expectError(await app.post('/status/offline', { user_id: 0 }), 400, 'invalid_user_id');
    await expectError(await app.post('/status/offline', '{'), 400, 'invalid_json');
    await expectError(
      await app.post('/status/offline', [{ user_id: 1 }, { user_id: 2 }, { user_id: 3 }]),
      413,
      'too_many_ids',
    );
    await expectError(
      await app.post('/status/offline', 'user_id=1', { 'content-type': 'text/plain' }),
      415,
      'unsupported_media_type',
    );
    await database.putRow(5, 0);
    expect(await (await app.post('/status/offline', [{ user_id: 5 }])).json()).to.deep.equal({
      status: 'success',
      accepted: 1,
    });
    expect(await database.userIds()).to.deep.equal([]);
  });

  it('refuses streams above STREAM_MAX_OPEN with 503 and Retry-After', async () => {
    const app = await start({ STREAM_MAX_OPEN: '2' });
    const first = await open(app, '?watch=1');
    await open(app, '?watch=1');
    await expectError(await app.get('/status/stream?watch=1'), 503, 'too_many_streams');
    const again = await fetch(`${app.baseUrl}/status/stream?watch=1`);
    expect(again.headers.get('retry-after')).to.match(/^\d+$/);
    await again.arrayBuffer();
    first.close();
    const third = await (async () => {
      for (let i = 0; i < 50; i += 1) {
        const stream = await open(app, '?watch=1');
        if (stream.response.status === 200) return stream;
        await stream.response.arrayBuffer().catch(() => undefined);
        await waitOut(50);
      }
      throw new Error('no slot came free after a stream closed');
    })();
    expect((await third.next()).event).to.equal('snapshot');
    const metrics = await (await app.get('/metrics')).text();
    expect(metrics).to.match(/pulse_streams_open 2/);
    expect(metrics).to.match(/pulse_streams_rejected_total\{code="too_many_streams"\} [1-9]/);
  });

  it('disconnects a consumer that stops reading, and only that one', async () => {
    const app = await start({
      BATCH_MAX_IDS: '2000',
      STREAM_MAX_BUFFERED_BYTES: '16384',
      STREAM_DRAIN_TIMEOUT_SECONDS: '1',
      STREAM_POLL_INTERVAL_MS: '50',
    });
    const ids = Array.from({ length: 2000 }, (_, i) => i + 1).join(',');
    const reader = await open(app, `?watch=${ids}`);
    await reader.next();
    // A client that sends its request and then never reads a byte.
    const { port } = new URL(app.baseUrl);
    const stalled = createConnection({ host: '127.0.0.1', port: Number(port) });
    stalled.pause();
    stalled.on('error', () => undefined);
    stalled.write(`GET /status/stream?watch=${ids} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`);
    const closedBySlowness = async () =>
      /pulse_streams_closed_total\{reason="slow_consumer"\} 1/.test(
        await (await app.get('/metrics')).text(),
      );
    try {
      // Every user flips every poll, until the unread data has filled the socket and the buffer.
      let online = false;
      const deadline = Date.now() + 25_000;
      while (!(await closedBySlowness())) {
        if (Date.now() > deadline) throw new Error('the stalled stream was never disconnected');
        online = !online;
        // Through the write path: only what the store writes reaches the change log.
        const all = Array.from({ length: 2000 }, (_, i) => i + 1);
        if (online) await recordHeartbeats(database.db, all);
        else await setOffline(database.db, all);
        await waitOut(50);
      }
    } finally {
      stalled.destroy();
    }
    expect(reader.isEnded).to.equal(false);
    expect(reader.events.length).to.be.greaterThan(2000);
  });

  it('survives server-wide idle timeouts', async () => {
    const app = await start();
    app.server.timeout = 300; // a socket idle this long would be destroyed
    const stream = await open(app, '?watch=1');
    await stream.next();
    await waitOut(2_500);
    expect(stream.isEnded).to.equal(false);
    await app.post('/status/update', { user_id: 1 });
    expect((await stream.next()).data).to.deep.equal({
      user_id: 1,
      is_online: true,
      last_seen: await seen(1),
      devices: ONE_DEVICE,
    });
  });

  it('outlives the HTTP timeouts and is not counted against MAX_IN_FLIGHT_REQUESTS', async () => {
    const app = await start({
      HTTP_SOCKET_IDLE_TIMEOUT_MS: '300',
      HTTP_REQUEST_TIMEOUT_MS: '500',
      HTTP_HEADERS_TIMEOUT_MS: '400',
      STREAM_KEEPALIVE_SECONDS: '15', // no keep-alive comment resets the idle timer meanwhile
      MAX_IN_FLIGHT_REQUESTS: '1',
    });
    const first = await open(app, '?watch=1');
    const second = await open(app, '?watch=2');
    await first.next();
    await second.next();
    await waitOut(2_000);
    expect(first.isEnded).to.equal(false);
    expect(second.isEnded).to.equal(false);
    // Two streams are open, and still the one request slot is free.
    const response = await app.post('/status/update', { user_id: 1 });
    expect(response.status).to.equal(200);
    expect((await first.next()).data).to.deep.equal({
      user_id: 1,
      is_online: true,
      last_seen: await seen(1),
      devices: ONE_DEVICE,
    });
  });

  it('ends every open stream with a retry hint when the server shuts down', async () => {
    const app = await start();
    const first = await open(app, '?watch=1');
    const second = await open(app, '?hold=true&user_id=2');
    await first.next();
    await second.next();
    const retriesBefore = first.retries.length;
    const closing = app.close();
    await Promise.all([first.ended, second.ended]);
    await closing;
    expect(first.retries.length).to.equal(retriesBefore + 1);
    expect(second.retries.length).to.be.greaterThan(1);
    apps.splice(apps.indexOf(app), 1);
  });

  describe('with AUTH_MODE=jwt', () => {
    const secret = randomSecret();
    const tokens = hs256(secret);

    it('accepts the token in the Authorization header or as access_token, and holds its sub', async () => {
      const app = await start(jwtEnv(secret));
      await expectError(await app.get('/status/stream?watch=1'), 401, 'unauthorized');
      await expectError(
        await app.get('/status/stream?watch=1&access_token=nope'),
        401,
        'invalid_token',
      );
      const token = await tokens.user(31);
      await expectError(
        await app.get(`/status/stream?access_token=${token}`, bearer(token)),
        400,
        'invalid_request',
      );
      await expectError(
        await app.get(`/status/stream?hold=true&user_id=32&access_token=${token}`),
        403,
        'forbidden',
      );
      // The query token works on the stream only.
      await expectError(await app.get(`/status/31?access_token=${token}`), 401, 'unauthorized');

      // Watching is not presence: without hold=true the token's sub is not held.
      const watchOnly = await open(app, '?watch=32', bearer(token));
      expect((await watchOnly.next()).event).to.equal('snapshot');
      expect(await database.ageOf(31)).to.equal(undefined);
      watchOnly.close();

      const viaHeader = await open(app, '?watch=32&hold=true', bearer(token));
      expect((await viaHeader.next()).event).to.equal('snapshot');
      expect(await database.ageOf(31)).to.be.below(2); // asked to, the stream holds its sub online

      const viaQuery = await open(app, `?watch=31&access_token=${token}`);
      const [held] = (await viaQuery.next<Status[]>()).data;
      expect(held).to.deep.include({ user_id: 31, is_online: true });
      expect(held!.last_seen).to.be.a('string'); // held beats move it

      const gateway = await tokens.gateway();
      const forOther = await open(app, `?hold=true&user_id=33&access_token=${gateway}`);
      await forOther.next();
      expect(await database.ageOf(33)).to.be.below(2);

      await expectError(
        await app.post('/status/offline', { user_id: 32 }, bearer(token)),
        403,
        'forbidden',
      );
      await expectError(await app.post('/status/offline', { user_id: 31 }), 401, 'unauthorized');
      expect((await app.post('/status/offline', { user_id: 31 }, bearer(token))).status).to.equal(
        200,
      );
    });

    it('ends a stream when its token expires', async () => {
      const app = await start(jwtEnv(secret, { AUTH_CLOCK_TOLERANCE_SECONDS: '0' }));
      const token = await tokens.user(40, { expiresIn: 2 });
      const stream = await open(app, `?access_token=${token}`);
      await stream.next();
      await stream.ended;
      expect(stream.retries.length).to.equal(2);
    });
  });
});

describe('the API process with open streams', () => {
  let database: TestDatabase;
  before(async () => {
    database = await createTestDatabase();
  });
  after(async () => {
    await database.drop();
  });

  it('on SIGTERM ends every stream with a retry hint and exits 0 in time', async () => {
    const port = await freePort();
    const api = spawn(process.execPath, ['--import', 'tsx', 'api/main.ts'], {
      env: {
        PATH: process.env.PATH,
        DATABASE_URL: database.url,
        PORT: String(port),
        LOG_LEVEL: 'silent',
        SHUTDOWN_TIMEOUT_SECONDS: '5',
      },
      stdio: 'ignore',
    });
    const exited = once(api, 'exit') as Promise<[number | null, string | null]>;
    const base = `http://127.0.0.1:${port}`;
    for (let i = 0; !(await fetch(`${base}/healthz`).catch(() => undefined))?.ok; i += 1) {
      if (i > 300) throw new Error('the API did not start');
      await waitOut(50);
    }
    const streams = await Promise.all(
      ['?watch=1', '?watch=1,2&hold=true&user_id=3', '?hold=true&user_id=4'].map((q) =>
        SseStream.open(`${base}/status/stream${q}`),
      ),
    );
    for (const stream of streams) expect((await stream.next()).event).to.equal('snapshot');
    const hints = streams.map((s) => s.retries.length);
    const signalled = Date.now();
    api.kill('SIGTERM');
    await Promise.all(streams.map((s) => s.ended));
    const [code] = await exited;
    expect(code).to.equal(0);
    expect(Date.now() - signalled).to.be.below(5_000);
    expect(streams.map((s) => s.retries.length)).to.deep.equal(hints.map((n) => n + 1));
  });
});

describe('stream logs', () => {
  it('never write an access_token, valid or not', async () => {
    const database = await createTestDatabase();
    const secret = randomSecret();
    const lines: string[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _encoding, done) {
        lines.push(...chunk.toString().split('\n').filter(Boolean));
        done();
      },
    });
    const app = await startTestApp(
      database,
      { ...FAST, ...jwtEnv(secret) },
      createLogger('pulse-api', 'trace', sink),
    );
    try {
      const token = await hs256(secret).user(8);
      const forged = await hs256(randomSecret()).user(8);
      const stream = await SseStream.open(
        `${app.baseUrl}/status/stream?watch=8&access_token=${token}`,
      );
      await stream.next();
      await expectError(
        await app.get(`/status/stream?access_token=${forged}&watch=8`),
        401,
        'invalid_token',
      );
      await expectError(
        await app.get(`/status/stream?access_token=${token}&hold=true&user_id=9`),
        403,
        'forbidden',
      );
      stream.close();
      await app.close();
      const text = lines.join('\n');
      expect(text).to.include('access_token=[redacted]');
      for (const secretValue of [token, forged, token.split('.')[2]!, forged.split('.')[2]!]) {
        expect(text).not.to.include(secretValue);
      }
    } finally {
      await app.close();
      await database.drop();
    }
  });
});

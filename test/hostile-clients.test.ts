/**
 * Hostile clients and recoveries (issue 27): a token never reaches the log, slow sockets cannot
 * shut the door, streams pass admission, held presence survives an outage and a threshold change,
 * stalled readers pin bounded memory, admitted requests give up in time.
 */
import { once } from 'node:events';
import { connect, type Socket } from 'node:net';
import { Writable } from 'node:stream';
import { expect } from 'chai';
import { captureLog } from './support/log-capture.ts';
import { sql } from 'kysely';
import type { Response as ExpressResponse } from 'express';
import { redactAccessToken } from '../api/edge/auth.ts';
import { StreamHub, type StreamCloseReason } from '../api/stream/status-stream.ts';
import { openDatabase, type DatabaseHandle } from '../lib/infra/db.ts';
import type { Logger } from '../lib/infra/logger.ts';
import { updatePresenceSettings, type UserStatus } from '../lib/store/pulse-store.ts';
import { startTestApp, type TestApp } from './support/app.ts';
import { createTestDatabase, lockPulse, type TestDatabase } from './support/database.ts';
import { expectError } from './support/http.ts';
import { SseStream } from './support/sse.ts';
import { startTcpProxy, type TcpProxy } from './support/tcp-proxy.ts';
import { bearer, hs256, jwtEnv, randomSecret } from './support/tokens.ts';
import { waitFor } from './support/entry-points.ts';

interface LogLine {
  level: number;
  msg: string;
  reason?: string;
  req?: { url: string };
}

/** A client announcing `length` bytes of body and sending one byte every `everyMs`. */
async function slowSocket(baseUrl: string, length: number, everyMs: number) {
  const { hostname, port } = new URL(baseUrl);
  const socket: Socket = connect({ host: hostname, port: Number(port) });
  socket.on('error', () => undefined);
  await once(socket, 'connect');
  let received = '';
  socket.on('data', (chunk: Buffer) => (received += chunk.toString()));
  socket.write(
    'POST /status/update HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n' +
      `Content-Length: ${length}\r\n\r\n{`,
  );
  const drip = setInterval(() => {
    if (!socket.destroyed) socket.write(' ');
  }, everyMs);
  // 'close' comes after 'error' too (a reset): once() would reject on the error instead.
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve())).then(() =>
    clearInterval(drip),
  );
  return {
    received: () => received,
    closed,
    destroy: () => {
      clearInterval(drip);
      socket.destroy();
    },
  };
}

describe('hostile clients', function () {
  this.timeout(60_000);
  let database: TestDatabase;
  const apps: TestApp[] = [];
  const streams: SseStream[] = [];

  async function start(env: Record<string, string> = {}, logger?: Logger) {
    const app = await startTestApp(database, env, logger);
    apps.push(app);
    return app;
  }
  async function open(app: TestApp, query: string, headers: Record<string, string> = {}) {
    const stream = await SseStream.open(`${app.baseUrl}/status/stream${query}`, headers);
    streams.push(stream);
    return stream;
  }

  beforeEach(async () => {
    database = await createTestDatabase();
  });
  afterEach(async () => {
    for (const stream of streams.splice(0)) stream.close();
    for (const app of apps.splice(0)) await app.close();
    await database.drop();
  });

  describe('the access_token in the log', () => {
    it('is redacted whatever encoding its name is sent in', () => {
      for (const name of ['access_token', 'access%5Ftoken', '%61ccess_token', 'ACCESS%5fTOKEN']) {
        expect(redactAccessToken(`/status/stream?watch=1&${name}=a.b.c&x=1`)).to.equal(
          `/status/stream?watch=1&${name}=[redacted]&x=1`,
        );
      }
      expect(redactAccessToken('/status/stream?watch=1#f')).to.equal('/status/stream?watch=1#f');
      expect(redactAccessToken('/status/1')).to.equal('/status/1');
    });

    it('never reaches the log when a stream is opened with an encoded parameter name', async () => {
      const secret = randomSecret();
      const { raw, logger } = captureLog<LogLine>('trace');
      const app = await start(jwtEnv(secret), logger);
      const token = await hs256(secret).user(8);
      for (const name of ['access%5Ftoken', '%61ccess_token']) {
        const stream = await open(app, `?watch=43&${name}=${token}`);
        // The query parser decodes the name: the token is accepted, so it must not be logged.
        expect(stream.response.status).to.equal(200);
        expect((await stream.next()).event).to.equal('snapshot');
        stream.close();
      }
      await waitFor(
        'both access lines',
        () => raw.filter((line) => line.includes('/status/stream')).length >= 2,
      );
      const text = raw.join('\n');
      expect(text).to.include('access%5Ftoken=[redacted]').and.include('%61ccess_token=[redacted]');
      expect(text).not.to.include(token.split('.')[2]!);
    });
  });

  describe('AUTH_MAX_TOKEN_LIFETIME_SECONDS', () => {
    it('refuses a token whose exp - iat is longer, one without iat, and one issued in the future', async () => {
      const secret = randomSecret();
      const tokens = hs256(secret);
      const app = await start(jwtEnv(secret, { AUTH_MAX_TOKEN_LIFETIME_SECONDS: '3600' }));
      const year2200 = Date.UTC(2200, 0, 1) / 1000;
      const now = Math.floor(Date.now() / 1000);
      const refused = [
        await tokens.user(1, { claims: { exp: year2200 } }),
        await tokens.user(1, { expiresIn: 3601 }),
        await tokens.user(1, { claims: { iat: undefined } }),
        await tokens.user(1, { claims: { iat: year2200 - 60, exp: year2200 } }),
      ];
      for (const token of refused) {
        await expectError(
          await app.post('/status/update', { user_id: 1 }, bearer(token)),
          401,
          'invalid_token',
        );
      }
      const fine = await tokens.user(1, { claims: { iat: now - 10, exp: now + 3590 } });
      expect((await app.post('/status/update', { user_id: 1 }, bearer(fine))).status).to.equal(200);
    });

    it('accepts the year 2200 when unset', async () => {
      const secret = randomSecret();
      const app = await start(jwtEnv(secret));
      const token = await hs256(secret).user(1, { claims: { exp: Date.UTC(2200, 0, 1) / 1000 } });
      expect((await app.post('/status/update', { user_id: 1 }, bearer(token))).status).to.equal(
        200,
      );
    });
  });

  describe('slow sockets', () => {
    it('80 connections trickling announced 60 KB bodies leave single heartbeats answered at once', async () => {
      const app = await start({ REQUEST_BODY_TIMEOUT_MS: '30000' });
      const attackers = await Promise.all(
        Array.from({ length: 80 }, () => slowSocket(app.baseUrl, 61_440, 200)),
      );
      try {
        // Announced lengths counted, 8 of these filled the house (128); read bytes, they weigh 1.
        await waitFor('slow requests admitted', () => app.admission.inFlight >= 8, {
          timeoutMs: 10_000,
        });
        const started = performance.now();
        const answers = await Promise.all(
          Array.from({ length: 40 }, (_, i) => app.post('/status/update', { user_id: 1 + i })),
        );
        expect(answers.map((a) => a.status)).to.deep.equal(answers.map(() => 200));
        expect(performance.now() - started).to.be.below(5_000);
      } finally {
        for (const attacker of attackers) attacker.destroy();
      }
    });

    it('keeps a quarter of the house for small requests', async () => {
      const app = await start({ MAX_IN_FLIGHT_REQUESTS: '8', REQUEST_BODY_TIMEOUT_MS: '30000' });
      const attackers = await Promise.all(
        Array.from({ length: 6 }, () => slowSocket(app.baseUrl, 61_440, 200)),
      );
      try {
        await waitFor('six slow requests admitted', () => app.admission.inFlight === 6);
        // A seventh large body is refused: the last quarter is for small requests.
        const seventh = await slowSocket(app.baseUrl, 61_440, 200);
        attackers.push(seventh);
        await waitFor('the seventh answered', () => seventh.received().includes('}'));
        expect(seventh.received()).to.match(/^HTTP\/1\.1 503 /);
        expect((await app.post('/status/update', { user_id: 5 })).status).to.equal(200);
      } finally {
        for (const attacker of attackers) attacker.destroy();
      }
    });

    it('closes a body that does not arrive within REQUEST_BODY_TIMEOUT_MS with 408 body_timeout and gives its slot back', async () => {
      const app = await start({ REQUEST_BODY_TIMEOUT_MS: '500' });
      const attacker = await slowSocket(app.baseUrl, 100, 100);
      await waitFor('the slow request admitted', () => app.admission.inFlight === 1);
      const started = Date.now();
      await attacker.closed;
      expect(Date.now() - started).to.be.below(3_000);
      expect(attacker.received()).to.match(/^HTTP\/1\.1 408 /);
      expect(attacker.received()).to.include('"code":"body_timeout"');
      await waitFor('its slot given back', () => app.admission.inFlight === 0);
    });
  });

  describe('stream opens', () => {
    it('pass admission control like other reads, and stop counting once their snapshot is sent', async () => {
      const app = await start({ MAX_IN_FLIGHT_REQUESTS: '2' });
      const stream = await open(app, '?watch=1');
      expect((await stream.next()).event).to.equal('snapshot');
      await waitFor('the open stream no longer in flight', () => app.admission.inFlight === 0);

      const release = await lockPulse(database.url);
      try {
        const held = [101, 102].map((id) => app.post('/status/update', { user_id: id }));
        await waitFor('two heartbeats in flight', () => app.admission.inFlight === 2);
        await expectError(
          await app.get('/status/stream?watch=1&hold=true&user_id=7'),
          503,
          'overloaded',
        );
        await release();
        for (const answer of await Promise.all(held)) expect(answer.status).to.equal(200);
      } finally {
        await release();
      }
      expect(await database.userIds()).not.to.include(7);
    });

    it('HEAD holds no one and reads nothing', async () => {
      const app = await start();
      const head = await fetch(`${app.baseUrl}/status/stream?watch=1&hold=true&user_id=9`, {
        method: 'HEAD',
      });
      expect(head.status).to.equal(200);
      expect(head.headers.get('content-type')).to.match(/^text\/event-stream/);
      // A GET holding user 10 shows the difference: HEAD wrote nothing for 9.
      const stream = await open(app, '?watch=1&hold=true&user_id=10');
      await stream.next();
      expect(await database.userIds()).to.deep.equal([10]);
    });
  });

  describe('refusals in the log', () => {
    it('logs too_many_streams through the overload summary, never one error line each', async () => {
      const { lines, logger } = captureLog<LogLine>();
      const app = await start({ STREAM_MAX_OPEN: '1' }, logger);
      const stream = await open(app, '?watch=1');
      await stream.next();
      for (let i = 0; i < 5; i += 1) {
        await expectError(await app.get('/status/stream?watch=1'), 503, 'too_many_streams');
      }
      expect(lines.filter((l) => l.level >= 50)).to.deep.equal([]);
      const overloaded = lines.filter((l) => l.msg === 'overloaded: refusing requests with 503');
      expect(overloaded.map((l) => [l.level, l.reason])).to.deep.equal([[40, 'too_many_streams']]);
      const streamLines = lines.filter((l) => l.req?.url.includes('/status/stream'));
      expect(streamLines).to.have.length(0); // the open stream has not ended: no line yet
    });
  });

  describe('admitted requests', () => {
    it('give up with 503 deadline_exceeded and Retry-After after REQUEST_DEADLINE_MS', async () => {
      const app = await start({ REQUEST_DEADLINE_MS: '500' });
      const release = await lockPulse(database.url);
      try {
        const started = Date.now();
        const answer = await app.post('/status/update', { user_id: 1 });
        expect(Date.now() - started).to.be.within(400, 3_000);
        expect(answer.headers.get('retry-after')).to.equal('1');
        await expectError(answer, 503, 'deadline_exceeded');
        await waitFor('the slot given back', () => app.admission.inFlight === 0);
      } finally {
        await release();
      }
    });

    it('/readyz answers 503 while pulse is locked against writes, and in time', async () => {
      const app = await start();
      expect((await app.get('/readyz')).status).to.equal(200);
      const release = await lockPulse(database.url);
      try {
        const started = Date.now();
        await expectError(await app.get('/readyz'), 503, 'not_ready');
        expect(Date.now() - started).to.be.below(4_000);
      } finally {
        await release();
      }
      expect((await app.get('/readyz')).status).to.equal(200);
    });
  });

  describe('held presence', () => {
    it('follows a threshold lowered at run time without flapping', async () => {
      const app = await start({ STREAM_POLL_INTERVAL_MS: '100' });
      const stream = await open(app, '?watch=1&hold=true&user_id=7');
      await stream.next();
      await updatePresenceSettings(database.db, { onlineThresholdSeconds: 2 });
      // The beats follow within a tick: two consecutive beats less than 1.5 s apart by the
      // database clock (6.7 s apart before the change). Beats are told by last_hb changing.
      const lastHb = async () => {
        const { rows } = await sql<{ at: number }>`
          SELECT extract(epoch FROM last_hb)::float8 AS at FROM pulse WHERE user_id = 7`.execute(
          database.db,
        );
        return rows[0]?.at ?? 0;
      };
      const nextBeat = async (after: number) =>
        waitFor('a held beat', async () => ((await lastHb()) > after ? lastHb() : 0), {
          timeoutMs: 10_000,
        });
      const changedAt = await lastHb();
      const first = await nextBeat(changedAt);
      const second = await nextBeat(first);
      const third = await nextBeat(second);
      expect(third - second, 'seconds between two beats at the new pace').to.be.below(1.5);
      // From then on user 7 never reads offline, nor does a watcher see it flap.
      const watcher = await open(app, '?watch=7');
      await watcher.next();
      const until = Date.now() + 4_000;
      while (Date.now() < until) {
        const row = (await (await app.get('/status/7')).json()) as UserStatus;
        expect(row.is_online, 'user 7 read offline').to.equal(true);
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      expect(watcher.events.filter((e) => e.event === 'change')).to.deep.equal([]);
    });
  });
});

describe('held presence across a database outage longer than the threshold', function () {
  this.timeout(60_000);
  let database: TestDatabase;
  let proxy: TcpProxy;
  let behindProxy: DatabaseHandle;
  let app: TestApp;
  const log = captureLog<LogLine>();

  before(async () => {
    database = await createTestDatabase();
    await updatePresenceSettings(database.db, { onlineThresholdSeconds: 1 });
    const target = new URL(database.url);
    proxy = await startTcpProxy({ targetHost: target.hostname, targetPort: Number(target.port) });
    const url = proxy.rewriteUrl(database.url);
    behindProxy = openDatabase({
      connectionString: url,
      poolMax: 4,
      applicationName: 'pulse-held-outage-test',
      logger: log.logger,
    });
    app = await startTestApp(
      { ...behindProxy, url },
      { ONLINE_THRESHOLD_SECONDS: '1', STREAM_POLL_INTERVAL_MS: '50' },
      log.logger,
    );
  });
  after(async () => {
    await app?.close();
    await behindProxy?.close();
    await proxy?.close();
    await database?.drop();
  });

  it('beats as the database comes back, so watchers see no flap and the log holds only the outage summary', async () => {
    const holder = await SseStream.open(`${app.baseUrl}/status/stream?watch=1&hold=true&user_id=7`);
    await holder.next();
    const watcher = await SseStream.open(`${app.baseUrl}/status/stream?watch=7`);
    try {
      expect((await watcher.next<UserStatus[]>()).data[0]).to.include({ is_online: true });
      proxy.dropConnections();
      proxy.refuse();
      // Longer than the threshold: the row expires meanwhile.
      await waitFor('the row to expire', async () => ((await database.ageOf(7)) ?? 0) > 2.5, {
        timeoutMs: 10_000,
      });
      proxy.accept();
      const back = Date.now();
      await waitFor('the held beat', async () => ((await database.ageOf(7)) ?? 99) < 0.5, {
        timeoutMs: 10_000,
      });
      expect(Date.now() - back).to.be.below(2_000);
      // Several polls after the recovery: none said user 7 went offline.
      await waitFor(
        'the recovery line',
        () => log.lines.some((l) => l.msg === 'database available again'),
        { timeoutMs: 10_000 },
      );
      expect(watcher.events.filter((e) => e.event === 'change')).to.deep.equal([]);
      const messages = log.lines.map((l) => l.msg);
      expect(messages).not.to.include('held heartbeat not written');
      expect(messages).not.to.include('change detection failed');
      expect(messages.filter((m) => m === 'database unavailable')).to.have.length(1);
    } finally {
      holder.close();
      watcher.close();
    }
  });
});

describe('stalled stream readers', () => {
  /** A response whose client never reads: every byte written stays in the process. */
  function stalledResponse(): ExpressResponse {
    const sink = new Writable({ highWaterMark: 16_384, write: () => undefined });
    return Object.assign(sink, {
      status: () => sink,
      set: () => sink,
      flushHeaders: () => undefined,
    }) as unknown as ExpressResponse;
  }

  it('200 of them hold at most STREAM_MAX_BUFFERED_BYTES_TOTAL together, and give it all back on close', () => {
    const total = 2 * 1024 * 1024;
    const closed: StreamCloseReason[] = [];
    const hub = new StreamHub(
      {
        maxOpen: 1000,
        keepAliveMs: 60_000,
        retryMs: 1000,
        drainTimeoutMs: 60_000,
        maxBufferedBytes: 1024 * 1024,
        maxBufferedBytesTotal: total,
      },
      { onClose: (reason) => closed.push(reason) },
    );
    const responses = Array.from({ length: 200 }, () => stalledResponse());
    const sessions = responses.map((res) => {
      const session = hub.start(res);
      res.once('close', () => hub.finish(session));
      return session;
    });
    const rows: UserStatus[] = Array.from({ length: 100 }, (_, i) => ({
      user_id: i + 1,
      is_online: true,
      last_seen: new Date(0).toISOString(),
      devices: { count: 1, kinds: [] },
    }));
    for (let round = 0; round < 20; round += 1) {
      for (const session of sessions) session.snapshot(rows);
      const waiting = responses.reduce(
        (sum, res) => sum + (res.destroyed ? 0 : res.writableLength),
        0,
      );
      // Each stream may also hold up to its socket's high-water mark and one write uncounted.
      expect(waiting).to.be.at.most(total + 200 * 16 * 1024);
      expect(hub.bufferedBytes).to.be.at.most(total + 8 * 1024);
    }
    return new Promise<void>((resolve) => setImmediate(resolve)).then(() => {
      expect(closed.length).to.be.above(0);
      expect(new Set(closed)).to.deep.equal(new Set(['slow_consumer']));
      for (const res of responses) res.destroy();
      return new Promise<void>((resolve) => setImmediate(resolve)).then(() => {
        expect(hub.bufferedBytes).to.equal(0);
        expect(hub.open).to.equal(0);
        hub.close();
      });
    });
  });
});

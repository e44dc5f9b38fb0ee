import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { expect } from 'chai';
import {
  PulseClient,
  type PresenceChange,
  type PulseClientOptions,
  type PulseError,
} from '../client/src/index.ts';
import { updatePresenceSettings } from '../lib/store/pulse-store.ts';
import { startTestApp, type TestApp } from './support/app.ts';
import { createTestDatabase, silentLogger, type TestDatabase } from './support/database.ts';
import { hs256, jwtEnv, randomSecret } from './support/tokens.ts';
import { waitFor } from './support/entry-points.ts';

/** Fast change detection and reconnect hints, so each case takes about a second. */
const API_ENV = { STREAM_POLL_INTERVAL_MS: '100', STREAM_RETRY_MS: '400' };

interface Recorded {
  at: number;
  url: string;
  method: string;
  status: number;
  retryAfter: string | null;
}

/** A fetch that records every request the client makes, and its answer. */
function recordingFetch(log: Recorded[]): typeof fetch {
  return async (input, init) => {
    const response = await fetch(input, init);
    log.push({
      at: Date.now(),
      url: input instanceof Request ? input.url : String(input),
      method: init?.method ?? 'GET',
      status: response.status,
      retryAfter: response.headers.get('retry-after'),
    });
    return response;
  };
}

/**
 * The real API behind a proxy that answers 404 for the stream, as a Pulse from before the stream
 * (or a proxy that does not pass it) would, or 503 as a full one would; every other request goes
 * through.
 */
async function withoutStream(
  target: string,
  streamStatus: 404 | 503 = 404,
): Promise<{ url: string; close(): Promise<void> }> {
  const server: Server = createServer((req, res) => {
    if (req.url?.startsWith('/status/stream')) {
      if (streamStatus === 503) {
        res.writeHead(503, { 'content-type': 'application/json', 'retry-after': '1' });
        res.end('{"error":{"code":"too_many_streams","message":"too many open streams"}}');
        return;
      }
      res.writeHead(404, { 'content-type': 'application/json' });
      res.end('{"error":{"code":"not_found","message":"no route for GET /status/stream"}}');
      return;
    }
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      const body = chunks.length ? Buffer.concat(chunks) : undefined;
      fetch(target + req.url, {
        method: req.method ?? 'GET',
        headers: {
          'content-type': req.headers['content-type'] ?? 'application/json',
          ...(req.headers.authorization ? { authorization: req.headers.authorization } : {}),
        },
        ...(body ? { body } : {}),
      })
        .then(async (answer) => {
          res.writeHead(answer.status, {
            'content-type': answer.headers.get('content-type') ?? '',
            'pulse-online-threshold-seconds':
              answer.headers.get('pulse-online-threshold-seconds') ?? '',
          });
          res.end(Buffer.from(await answer.arrayBuffer()));
        })
        .catch(() => res.destroy());
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

describe('client library in Node, against the real API', function () {
  this.timeout(20_000);
  let database: TestDatabase;
  let api: TestApp;
  const clients: PulseClient[] = [];

  const client = (options: Omit<PulseClientOptions, 'url'>, app = api): PulseClient => {
    const pulse = new PulseClient({ url: app.baseUrl, ...options });
    clients.push(pulse);
    return pulse;
  };
  const isOnline = async (userId: number, app = api): Promise<boolean> =>
    ((await (await app.get(`/status/${userId}`)).json()) as { is_online: boolean }).is_online;

  before(async () => {
    database = await createTestDatabase();
    api = await startTestApp(database, API_ENV);
  });
  afterEach(async () => {
    await Promise.all(clients.splice(0).map((pulse) => pulse.stop()));
  });
  after(async () => {
    await api.close();
    await database.drop();
  });

  it('holds presence with one stream: online at once, no heartbeat requests of its own', async () => {
    const log: Recorded[] = [];
    const pulse = client({ userId: 11, fetch: recordingFetch(log) });
    expect(pulse.status).to.equal('idle');
    pulse.start();
    await waitFor('the stream', () => pulse.status === 'live');
    expect(await isOnline(11)).to.equal(true);
    expect(
      log.map((r) => `${r.method} ${new URL(r.url).pathname}${new URL(r.url).search}`),
    ).to.deep.equal([
      `GET /status/stream?hold=true&user_id=11&device_id=${pulse.deviceId}&device_kind=other`,
    ]);
    // One random device id per Node process, shared by its clients.
    expect(pulse.deviceId).to.match(/^n-[a-z0-9]{16}$/);
    expect(client({}).deviceId).to.equal(pulse.deviceId);
  });

  it('is one device of its user: stop({ offline: true }) ends only that device', async () => {
    const watcher = client({});
    const seen: PresenceChange[] = [];
    watcher.watch([31], (change) => seen.push(change));
    // Its first state before the phone beats: else the snapshot may already say online.
    await waitFor("the watcher's first state", () => seen.length === 1);
    const phone = client({ userId: 31, deviceId: 'phone-31', deviceKind: 'mobile' });
    const laptop = client({ userId: 31, deviceId: 'laptop-31', deviceKind: 'desktop' });
    phone.start();
    await waitFor('user 31 online', () => watcher.isOnline(31) === true);
    laptop.start();
    await waitFor('the laptop live', () => laptop.status === 'live');
    const [both] = await watcher.read([31]);
    expect(both!.devices).to.deep.equal({ count: 2, kinds: ['desktop', 'mobile'] });
    await laptop.stop({ offline: true });
    const [left] = await watcher.read([31]);
    expect(left).to.deep.include({ is_online: true, devices: { count: 1, kinds: ['mobile'] } });
    await phone.stop({ offline: true });
    await waitFor('user 31 offline', () => watcher.isOnline(31) === false, { timeoutMs: 2_000 });
    expect(seen.map((change) => change.is_online)).to.deep.equal([false, true, false]);
    expect(seen[1]!.devices).to.deep.equal({ count: 1, kinds: ['mobile'] });
    expect(() => client({ deviceId: 'no spaces' })).to.throw(TypeError, /deviceId/);
    expect(() => client({ deviceKind: 'tv' as 'web' })).to.throw(TypeError, /deviceKind/);
  });

  it('watches: the current state first, then each transition; isOnline follows', async () => {
    const watcher = client({});
    const seen: PresenceChange[] = [];
    const unwatch = watcher.watch([21, 22], (change) => seen.push(change));
    await waitFor('the first states', () => seen.length === 2);
    expect(seen).to.have.deep.members([
      { user_id: 21, is_online: false, devices: { count: 0, kinds: [] } },
      { user_id: 22, is_online: false, devices: { count: 0, kinds: [] } },
    ]);
    expect(watcher.isOnline(21)).to.equal(false);
    expect(watcher.isOnline(99)).to.equal(undefined);

    const user = client({ userId: 21 });
    user.start();
    await waitFor('user 21 online', () => watcher.isOnline(21) === true);
    await user.stop({ offline: true });
    await waitFor('user 21 offline', () => watcher.isOnline(21) === false, { timeoutMs: 2_000 });
    expect(seen.filter((c) => c.user_id === 21).map((c) => c.is_online)).to.deep.equal([
      false,
      true,
      false,
    ]);

    // After unwatch, nothing more arrives: a second watcher sees user 22 come online, the first not.
    unwatch();
    const other = client({});
    other.watch([22], () => {});
    await waitFor('the second watcher', () => other.isOnline(22) === false);
    await api.post('/status/update', { user_id: 22 });
    await waitFor('user 22 online for the second watcher', () => other.isOnline(22) === true);
    expect(seen.filter((c) => c.user_id === 22)).to.have.length(1);
    expect(watcher.isOnline(22)).to.equal(undefined);
    // Watching again starts from the current state at once (the stream still carried it).
    const again: PresenceChange[] = [];
    watcher.watch([22], (change) => again.push(change));
    await waitFor('the state on watching again', () => again.length === 1);
    expect(again).to.deep.equal([
      { user_id: 22, is_online: true, devices: { count: 1, kinds: [] } },
    ]);
  });

  it('stop({ offline: true }) ends presence at once; stop() leaves it to the threshold', async () => {
    const leaving = client({ userId: 41 });
    const staying = client({ userId: 42 });
    leaving.start();
    staying.start();
    await waitFor('both streams', () => leaving.status === 'live' && staying.status === 'live');
    await leaving.stop({ offline: true });
    await staying.stop();
    expect(await isOnline(41)).to.equal(false);
    expect(await isOnline(42)).to.equal(true);
    expect(leaving.status).to.equal('idle');
  });

  it('reconnects after the API restarts; the user stays online and changes flow again', async () => {
    const port = Number(new URL(api.baseUrl).port);
    const pulse = client({ userId: 51 });
    pulse.start();
    pulse.watch([52], () => {});
    await waitFor('the stream', () => pulse.status === 'live' && pulse.isOnline(52) === false);

    await api.close();
    await waitFor('the client to notice', () => pulse.status !== 'live');
    api = await startTestApp(database, API_ENV, silentLogger, port);
    await waitFor('the stream back', () => pulse.status === 'live', { timeoutMs: 10_000 });
    expect(await isOnline(51)).to.equal(true);
    await api.post('/status/update', { user_id: 52 });
    await waitFor('a change after the restart', () => pulse.isOnline(52) === true);
  });

  it('waits at least Retry-After when the stream is refused, and holds presence by heartbeats meanwhile', async () => {
    const full = await startTestApp(database, {
      ...API_ENV,
      STREAM_MAX_OPEN: '0',
      STREAM_RETRY_MS: '1000',
    });
    try {
      const log: Recorded[] = [];
      // Without Retry-After, these windows would bring the client back within 50 ms.
      const pulse = client(
        {
          userId: 61,
          fetch: recordingFetch(log),
          backoff: { initialMs: 20, maxMs: 50 },
          onlineThresholdSeconds: 4,
        },
        full,
      );
      pulse.start();
      const streams = () => log.filter((r) => r.url.includes('/status/stream'));
      await waitFor('three stream attempts', () => streams().length >= 3, { timeoutMs: 10_000 });
      const attempts = streams();
      for (let i = 1; i < attempts.length; i += 1) {
        const previous = attempts[i - 1]!;
        expect(previous.status).to.equal(503);
        const floor = Number(previous.retryAfter) * 1000;
        expect(floor).to.be.at.least(1000);
        expect(attempts[i]!.at - previous.at, `gap after attempt ${i}`).to.be.at.least(floor);
      }
      expect(pulse.status).to.be.oneOf(['backoff', 'connecting']);
      await waitFor('user 61 online by heartbeats', () => isOnline(61, full));
      expect(log.some((r) => r.url.endsWith('/status/update') && r.status === 200)).to.equal(true);
    } finally {
      await Promise.all(clients.splice(0).map((pulse) => pulse.stop()));
      await full.close();
    }
  });

  it('without a stream on the server, holds presence by heartbeats and polls watched users', async () => {
    const proxy = await withoutStream(api.baseUrl);
    try {
      const log: Recorded[] = [];
      const pulse = new PulseClient({
        url: proxy.url,
        userId: 81,
        fetch: recordingFetch(log),
        onlineThresholdSeconds: 2,
      });
      clients.push(pulse);
      pulse.start();
      pulse.watch([82], () => {});
      await waitFor('the polling fallback', () => pulse.status === 'polling');
      await waitFor('the first poll', () => pulse.isOnline(82) === false);
      await waitFor('user 81 online by heartbeats', () => isOnline(81));
      await api.post('/status/update', { user_id: 82 });
      await waitFor('user 82 online by polling', () => pulse.isOnline(82) === true);
      const paths = log.map((r) => `${r.method} ${new URL(r.url).pathname}`);
      expect(paths.filter((p) => p === 'GET /status/stream')).to.have.length(1);
      expect(paths).to.include('POST /status/update').and.to.include('POST /status/batch');
      await pulse.stop({ offline: true });
      expect(await isOnline(81)).to.equal(false);
    } finally {
      await Promise.all(clients.splice(0).map((pulse) => pulse.stop()));
      await proxy.close();
    }
  });

  it('paces its fallback heartbeats by the threshold the server announces', async () => {
    // The server's threshold is 2 s: beats every 0.8-1 s. By its own default (20 s) the client
    // would beat once in the window below.
    const quick = await startTestApp(database, { ...API_ENV, ONLINE_THRESHOLD_SECONDS: '2' });
    const proxy = await withoutStream(quick.baseUrl);
    try {
      const log: Recorded[] = [];
      const pulse = new PulseClient({ url: proxy.url, userId: 83, fetch: recordingFetch(log) });
      clients.push(pulse);
      pulse.start();
      const beats = () =>
        log.filter((r) => r.method === 'POST' && new URL(r.url).pathname === '/status/update');
      await waitFor('the first heartbeat', () => beats().length >= 1);
      const first = beats()[0]!.at;
      await waitFor('two more heartbeats at the server pace', () => beats().length >= 3);
      expect(beats()[2]!.at - first).to.be.below(4000);
    } finally {
      await Promise.all(clients.splice(0).map((pulse) => pulse.stop()));
      await proxy.close();
      await quick.close();
      // The threshold lives in the database this file shares: put the default back.
      await updatePresenceSettings(database.db, { onlineThresholdSeconds: 20 });
    }
  });

  it('asks getToken again after a 401 and goes live with the fresh token', async () => {
    const secret = randomSecret();
    const minter = hs256(secret);
    const secured = await startTestApp(database, jwtEnv(secret, API_ENV));
    try {
      const tokens = [
        await minter.sign({ claims: { sub: '71' }, expiresIn: -60 }),
        await minter.sign({ claims: { sub: '71' } }),
      ];
      let calls = 0;
      const pulse = client({ getToken: () => tokens[Math.min(calls++, 1)]! }, secured);
      pulse.start();
      await waitFor('the stream with the fresh token', () => pulse.status === 'live');
      expect(calls).to.equal(2);
      // GET /status needs a token here: read the table instead.
      expect(await database.ageOf(71)).to.be.within(0, 2);
      await pulse.stop({ offline: true });
      expect(await database.ageOf(71)).to.equal(undefined);
    } finally {
      await Promise.all(clients.splice(0).map((pulse) => pulse.stop()));
      await secured.close();
    }
  });

  it("with a user's token, watching holds nothing; start() holds the token's user", async () => {
    const secret = randomSecret();
    const secured = await startTestApp(database, jwtEnv(secret, API_ENV));
    try {
      const token = await hs256(secret).sign({ claims: { sub: '73' } });
      const pulse = client({ token }, secured);
      const seen: PresenceChange[] = [];
      pulse.watch([74], (change) => seen.push(change));
      await waitFor('the watch-only stream', () => pulse.status === 'live' && seen.length === 1);
      expect(await database.ageOf(73), 'a watching token holds no one').to.equal(undefined);
      pulse.start();
      await waitFor('held presence', async () => (await database.ageOf(73)) !== undefined);
    } finally {
      await Promise.all(clients.splice(0).map((pulse) => pulse.stop()));
      await secured.close();
    }
  });

  it('reports a failing getToken and keeps its fallback heartbeats going, with no unhandled rejection', async () => {
    const secret = randomSecret();
    const secured = await startTestApp(database, jwtEnv(secret, API_ENV));
    // The stream is refused (503): presence rests on the fallback heartbeat loop.
    const proxy = await withoutStream(secured.baseUrl, 503);
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => unhandled.push(reason);
    process.on('unhandledRejection', onUnhandled);
    try {
      const token = await hs256(secret).sign({ claims: { sub: '72' } });
      let failing = true;
      const errors: PulseError[] = [];
      const log: Recorded[] = [];
      const pulse = new PulseClient({
        url: proxy.url,
        getToken: () =>
          failing ? Promise.reject(new Error('identity provider down')) : Promise.resolve(token),
        onError: (error) => errors.push(error),
        onlineThresholdSeconds: 2,
        fetch: recordingFetch(log),
      });
      clients.push(pulse);
      pulse.start();
      // Past the first fallback beat (2 s after the stream failed), which asks for a token too.
      await waitFor(
        'getToken failures reported',
        () => errors.filter((e) => e.code === 'token_unavailable').length >= 4,
        { timeoutMs: 8_000 },
      );
      expect(errors.find((e) => e.code === 'token_unavailable')!.message).to.equal(
        'getToken failed: identity provider down',
      );
      failing = false;
      const beats = () =>
        log.filter((r) => new URL(r.url).pathname === '/status/update' && r.status === 200);
      await waitFor('fallback heartbeats once getToken works', () => beats().length >= 2, {
        timeoutMs: 8_000,
      });
      expect(await database.ageOf(72)).to.be.within(0, 2);
      expect(pulse.status).to.equal('backoff');
      expect(unhandled).to.deep.equal([]);
    } finally {
      process.off('unhandledRejection', onUnhandled);
      await Promise.all(clients.splice(0).map((pulse) => pulse.stop()));
      await proxy.close();
      await secured.close();
    }
  });
});

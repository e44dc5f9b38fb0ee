/**
 * Webhooks (issue 23) against real receivers: every request's signature is verified with the
 * standardwebhooks package, and every test ends with the same check: nothing logged is lost,
 * a webhook-id always carries the same body, and each user's transitions arrive in log order.
 */
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { expect } from 'chai';
import { sql } from 'kysely';
import { loadWebhooksConfig, ConfigError } from '../lib/infra/config.ts';
import { openDatabase, type DatabaseHandle } from '../lib/infra/db.ts';
import { recordHeartbeats, setOffline, type Executor } from '../lib/store/pulse-store.ts';
import { TRANSITION_REASONS } from '../lib/store/webhook-store.ts';
import { parseRetryAfter, retryDelayMs } from '../lib/webhooks/backoff.ts';
import { isPrivateAddress, refuseTargetUrl } from '../lib/webhooks/target-rule.ts';
import { WebhookFleet, type FleetOptions } from '../lib/webhooks/webhook-fleet.ts';
import { createHttpSender } from '../webhooks/http-sender.ts';
import { createTestDatabase, silentLogger, type TestDatabase } from './support/database.ts';
import { startWebhooks, waitFor } from './support/entry-points.ts';
import { startTcpProxy } from './support/tcp-proxy.ts';
import { startReceiver, type TestReceiver } from './support/webhook-receiver.ts';

const SECRET = `whsec_${randomBytes(32).toString('base64')}`;

const FAST: FleetOptions = {
  batchMaxEvents: 50,
  batchWaitMs: 20,
  backoff: { baseMs: 20, maxMs: 100 },
  retryForSeconds: 3600,
  leaseTtlSeconds: 3,
  backlogIntervalMs: 100,
  refreshMs: 100,
};

async function addEndpoint(
  db: Executor,
  url: string,
  extra: { name?: string; transitions?: string[]; reasons?: string[] } = {},
): Promise<number> {
  const { rows } = await sql<{ id: number }>`
    INSERT INTO pulse_webhooks (name, url, secret, transitions, reasons)
    VALUES (${extra.name ?? 'backend'}, ${url}, ${SECRET},
            ${extra.transitions ?? ['online', 'offline']}, ${extra.reasons ?? null})
    RETURNING id`.execute(db);
  return rows[0]!.id;
}

/** Logs one transition per user, in one transaction (as a gateway's batch would). */
async function logTransitions(db: Executor, userIds: number[], online: boolean): Promise<void> {
  await sql`INSERT INTO pulse_events (user_id, online, reason)
    SELECT unnest(${userIds}::bigint[]), ${online}, ${online ? 'heartbeat' : 'offline'}`.execute(
    db,
  );
}

/**
 * Writers that commit concurrently (so out of seq order), each owning its users and flipping them
 * online/offline `rounds` times. Resolves when all are done.
 */
async function writeConcurrently(
  db: Executor,
  plan: { writers: number; usersEach: number; rounds: number; pauseMs?: number },
  firstUser = 1,
): Promise<void> {
  const { writers, usersEach, rounds, pauseMs = 0 } = plan;
  await Promise.all(
    Array.from({ length: writers }, async (_, w) => {
      const users = Array.from({ length: usersEach }, (_, i) => firstUser + w * usersEach + i);
      for (let round = 0; round < rounds; round += 1) {
        await logTransitions(db, users, round % 2 === 0);
        if (pauseMs > 0) await new Promise((resolve) => setTimeout(resolve, pauseMs));
      }
    }),
  );
}

/** Every transition in the log, by seq. */
async function loggedSeqs(db: Executor): Promise<string[]> {
  const { rows } = await sql<{ seq: string }>`
    SELECT seq::text AS seq FROM pulse_events
    WHERE reason = ANY(${[...TRANSITION_REASONS]}::text[]) ORDER BY seq`.execute(db);
  return rows.map((r) => r.seq);
}

async function pendingBatches(db: Executor): Promise<number> {
  const { rows } = await sql<{ n: number }>`
    SELECT count(*)::int AS n FROM pulse_webhook_batches`.execute(db);
  return rows[0]!.n;
}

function deliveredSeqs(receiver: TestReceiver): string[] {
  return receiver.delivered().flatMap((r) => r.events.map((e) => e.seq));
}

/** The promise: nothing lost or delivered twice under two ids, same id same body, order per user. */
async function expectCompleteDelivery(db: Executor, receiver: TestReceiver): Promise<void> {
  expect(receiver.badSignatures, 'requests whose signature did not verify').to.equal(0);
  const bodies = new Map<string, string>();
  for (const request of receiver.requests) {
    const body = bodies.get(request.id);
    if (body !== undefined) expect(request.body, `body of ${request.id}`).to.equal(body);
    bodies.set(request.id, request.body);
  }
  const delivered = deliveredSeqs(receiver);
  expect(new Set(delivered).size, 'events delivered under two webhook-ids').to.equal(
    delivered.length,
  );
  expect([...delivered].sort(), 'delivered vs logged').to.deep.equal(
    [...(await loggedSeqs(db))].sort(),
  );
  const lastSeq = new Map<number, bigint>();
  for (const event of receiver.delivered().flatMap((r) => r.events)) {
    const previous = lastSeq.get(event.user_id) ?? -1n;
    expect(BigInt(event.seq) > previous, `user ${event.user_id}: ${event.seq} after ${previous}`).to
      .be.true;
    lastSeq.set(event.user_id, BigInt(event.seq));
  }
}

async function waitForAllDelivered(
  db: Executor,
  receiver: TestReceiver,
  timeoutMs = 20_000,
): Promise<void> {
  await waitFor(
    'every logged transition delivered',
    async () => (await loggedSeqs(db)).length === new Set(deliveredSeqs(receiver)).size,
    { timeoutMs, intervalMs: 50 },
  );
}

describe('webhooks: delivery to a real receiver', function () {
  this.timeout(60_000);
  let database: TestDatabase;
  let receiver: TestReceiver;
  const fleets: WebhookFleet[] = [];
  const sender = createHttpSender({
    timeoutMs: 300,
    responseMaxBytes: 1024,
    allowPrivateTargets: true,
  });

  function startFleet(options: Partial<FleetOptions> = {}, db: Executor = database.db) {
    const fleet = new WebhookFleet(db, sender.send, { ...FAST, ...options });
    fleets.push(fleet);
    fleet.start();
    return fleet;
  }

  beforeEach(async () => {
    database = await createTestDatabase();
    receiver = await startReceiver(SECRET);
  });
  afterEach(async () => {
    await Promise.all(fleets.splice(0).map((f) => f.stop()));
    await receiver.close();
    await database.drop();
  });
  after(() => sender.close());

  it('delivers every transition once, signed, in batches, in log order per user', async () => {
    await addEndpoint(database.db, receiver.url);
    startFleet();
    // Transitions from the real writers, then many from concurrent transactions.
    await recordHeartbeats(database.db, [1001, 1002]);
    await setOffline(database.db, [1001]);
    await writeConcurrently(database.db, { writers: 4, usersEach: 10, rounds: 25 });
    await waitForAllDelivered(database.db, receiver);
    await expectCompleteDelivery(database.db, receiver);
    const sizes = receiver.delivered().map((r) => r.events.length);
    expect(Math.max(...sizes)).to.be.within(2, FAST.batchMaxEvents);
    const first = receiver.delivered()[0]!;
    expect(first.id).to.match(/^pulse_\d+_\d+_\d+$/);
    expect(JSON.parse(first.body)).to.include({ type: 'presence.changed' });
    expect(first.events[0]).to.have.keys(['seq', 'user_id', 'online', 'reason', 'at', 'last_seen']);
    // The receiver has the last batch before the deliverer commits its acknowledgement.
    await waitFor('no batch left pending', async () => {
      const { rows } = await sql<{ n: number }>`
        SELECT count(*)::int AS n FROM pulse_webhook_batches`.execute(database.db);
      return rows[0]!.n === 0;
    });
  });

  it('delivers only the transitions an endpoint asks for', async () => {
    const offline = await startReceiver(SECRET);
    try {
      await addEndpoint(database.db, offline.url, {
        name: 'offline-only',
        transitions: ['offline'],
      });
      await addEndpoint(database.db, receiver.url, { name: 'explicit', reasons: ['offline'] });
      startFleet();
      await recordHeartbeats(database.db, [1, 2, 3]);
      await setOffline(database.db, [1, 2]);
      await logTransitions(database.db, [4], false); // reason offline, no online before it
      await waitFor(
        'both endpoints served',
        () =>
          offline.delivered().flatMap((r) => r.events).length === 3 &&
          receiver.delivered().flatMap((r) => r.events).length === 3,
      );
      for (const r of [offline, receiver]) {
        const events = r.delivered().flatMap((x) => x.events);
        expect(events.map((e) => [e.user_id, e.online, e.reason])).to.deep.equal([
          [1, false, 'offline'],
          [2, false, 'offline'],
          [4, false, 'offline'],
        ]);
      }
    } finally {
      await offline.close();
    }
  });

  it('retries a failing receiver with the same webhook-id and body until it answers 2xx', async () => {
    await addEndpoint(database.db, receiver.url);
    receiver.behave({ kind: 'fail', status: 500 });
    startFleet();
    await logTransitions(database.db, [1, 2, 3], true);
    await waitFor('three failed attempts', () => receiver.requests.length >= 3);
    const ids = new Set(receiver.requests.map((r) => r.id));
    expect(ids.size, 'webhook-ids across the retries').to.equal(1);
    const { rows } = await sql<{ attempts: number; last_status: number; last_error: string }>`
      SELECT attempts, last_status, last_error FROM pulse_webhook_batches`.execute(database.db);
    expect(rows[0]!.attempts).to.be.at.least(2);
    expect(rows[0]!).to.include({ last_status: 500, last_error: 'answered 500' });
    receiver.behave({ kind: 'ok' });
    await waitForAllDelivered(database.db, receiver);
    expect(receiver.delivered()[0]!.id).to.equal([...ids][0]);
    await expectCompleteDelivery(database.db, receiver);
  });

  it('goes on cutting the log into batches while the receiver fails, and sends them in order after', async () => {
    await addEndpoint(database.db, receiver.url);
    receiver.behave({ kind: 'fail', status: 503 });
    startFleet({ cutWhilePendingMs: 100, backoff: { baseMs: 500, maxMs: 500 } });
    for (const online of [true, false, true]) {
      const batchesBefore = await pendingBatches(database.db);
      await logTransitions(database.db, [1, 2, 3], online);
      await waitFor('the new transitions cut into a batch', async () => {
        return (await pendingBatches(database.db)) > batchesBefore;
      });
    }
    expect(new Set(receiver.requests.map((r) => r.id)).size, 'ids tried').to.equal(1);
    receiver.behave({ kind: 'ok' });
    await waitForAllDelivered(database.db, receiver);
    await expectCompleteDelivery(database.db, receiver);
    expect(receiver.delivered()).to.have.length(3);
  });

  it('honours Retry-After on a 429', async () => {
    await addEndpoint(database.db, receiver.url);
    receiver.behave({ kind: 'fail', status: 429, headers: { 'retry-after': '1' } });
    startFleet();
    await logTransitions(database.db, [1], true);
    await waitFor('two attempts', () => receiver.requests.length >= 2, { timeoutMs: 5_000 });
    const [first, second] = receiver.requests;
    // The backoff alone would retry within 100 ms (FAST.backoff.maxMs).
    expect(second!.at - first!.at).to.be.at.least(990);
    receiver.behave({ kind: 'ok' });
    await waitForAllDelivered(database.db, receiver);
    await expectCompleteDelivery(database.db, receiver);
  });

  it('times out a receiver that hangs, retries one that disappears, and loses nothing', async () => {
    await addEndpoint(database.db, receiver.url);
    startFleet();
    await logTransitions(database.db, [1, 2], true);
    await waitForAllDelivered(database.db, receiver);

    receiver.behave({ kind: 'hang' });
    await logTransitions(database.db, [1], false);
    await waitFor('two timed-out attempts', () => receiver.requests.length >= 3);
    const { rows: timedOut } = await sql<{ last_error: string }>`
      SELECT last_error FROM pulse_webhook_batches`.execute(database.db);
    expect(timedOut[0]!.last_error).to.equal('timed out');

    await receiver.disappear();
    await logTransitions(database.db, [2], false);
    await waitFor('an attempt on the vanished receiver', async () => {
      const { rows } = await sql<{ last_error: string }>`
        SELECT last_error FROM pulse_webhook_batches`.execute(database.db);
      return rows[0]?.last_error.startsWith('connection failed');
    });
    receiver.behave({ kind: 'ok' });
    await receiver.reappear();
    await logTransitions(database.db, [3], true);
    await waitForAllDelivered(database.db, receiver);
    await expectCompleteDelivery(database.db, receiver);
  });

  it('parks a batch after the retry period, and the replay SQL of the docs delivers it with the same webhook-id', async () => {
    await addEndpoint(database.db, receiver.url);
    receiver.behave({ kind: 'fail', status: 503 });
    startFleet({ retryForSeconds: 1 });
    await logTransitions(database.db, [1, 2], true);
    const parked = await waitFor('a parked batch', async () => {
      const { rows } = await sql<{ id: string; attempts: number }>`
        SELECT id, attempts FROM pulse_webhook_parked`.execute(database.db);
      return rows[0];
    });
    expect(parked.attempts).to.be.at.least(2);
    // Later events go on being delivered.
    receiver.behave({ kind: 'ok' });
    await logTransitions(database.db, [3], true);
    await waitFor('the later batch', () => deliveredSeqs(receiver).length === 1);

    // docs/webhooks.md, "Replaying parked batches".
    await sql`
      WITH replay AS (DELETE FROM pulse_webhook_parked WHERE id = ${parked.id} RETURNING *)
      INSERT INTO pulse_webhook_batches (endpoint_id, id, position, first_seq, last_seq,
                                         event_count, oldest_at, events, created_at)
      SELECT endpoint_id, id, position, first_seq, last_seq, event_count, oldest_at, events, created_at
      FROM replay`.execute(database.db);
    await waitForAllDelivered(database.db, receiver);
    expect(receiver.delivered().map((r) => r.id)).to.include(parked.id);
    // The receiver saw the parked batch's id before it was parked: it can tell it is a replay.
    expect(receiver.requests.filter((r) => r.id === parked.id).length).to.be.at.least(3);
    const delivered = deliveredSeqs(receiver);
    expect([...delivered].sort()).to.deep.equal([...(await loggedSeqs(database.db))].sort());
  });

  it('does not follow redirects: a 3xx is a failed attempt', async () => {
    await addEndpoint(database.db, receiver.url);
    const elsewhere = await startReceiver(SECRET);
    try {
      receiver.behave({ kind: 'fail', status: 307, headers: { location: elsewhere.url } });
      startFleet();
      await logTransitions(database.db, [1], true);
      await waitFor('two attempts', () => receiver.requests.length >= 2);
      expect(elsewhere.requests).to.have.length(0);
      receiver.behave({ kind: 'ok' });
      await waitForAllDelivered(database.db, receiver);
    } finally {
      await elsewhere.close();
    }
  });

  it('runs one deliverer per endpoint however many processes compete', async () => {
    await addEndpoint(database.db, receiver.url);
    const a = startFleet({ holder: 'a' });
    const b = startFleet({ holder: 'b' });
    await writeConcurrently(database.db, { writers: 2, usersEach: 5, rounds: 10, pauseMs: 5 });
    await waitForAllDelivered(database.db, receiver);
    await expectCompleteDelivery(database.db, receiver);
    const [id] = a.endpointIds;
    const holders = [a, b].filter((f) => f.deliverer(id!)?.holdsLease);
    expect(holders).to.have.length(1);
    expect(receiver.requests.length, 'requests (no failure: no repeat)').to.equal(
      receiver.delivered().length,
    );
  });

  it('loses nothing across a PostgreSQL restart (every connection dropped, refused for 1.5 s)', async () => {
    const target = new URL(database.url);
    const proxy = await startTcpProxy({
      targetHost: target.hostname,
      targetPort: Number(target.port),
    });
    const behindProxy: DatabaseHandle = openDatabase({
      connectionString: proxy.rewriteUrl(database.url),
      poolMax: 3,
      applicationName: 'pulse-webhooks-test',
      logger: silentLogger,
    });
    try {
      await addEndpoint(database.db, receiver.url);
      const fleet = startFleet({}, behindProxy.db);
      const writing = writeConcurrently(database.db, {
        writers: 3,
        usersEach: 5,
        rounds: 60,
        pauseMs: 20,
      });
      await waitFor('deliveries before the restart', () => receiver.delivered().length >= 2);
      await proxy.outage(1500);
      await writing;
      await waitForAllDelivered(database.db, receiver);
      await expectCompleteDelivery(database.db, receiver);
      await fleet.stop();
    } finally {
      await behindProxy.close();
      await proxy.close();
    }
  });
});

describe('webhooks: the deliverer process', function () {
  this.timeout(90_000);
  let database: TestDatabase;
  let receiver: TestReceiver;

  beforeEach(async () => {
    database = await createTestDatabase();
    receiver = await startReceiver(SECRET);
  });
  afterEach(async () => {
    await receiver.close();
    await database.drop();
  });

  const env = () => ({
    DATABASE_URL: database.url,
    LOG_FORMAT: 'json',
    WEBHOOKS_ALLOW_PRIVATE_TARGETS: 'true',
    WEBHOOKS_BATCH_MAX_EVENTS: '20',
    WEBHOOKS_BATCH_WAIT_MS: '20',
    WEBHOOKS_TIMEOUT_MS: '1000',
    WEBHOOKS_RETRY_BASE_MS: '20',
    WEBHOOKS_RETRY_MAX_DELAY_MS: '100',
    WEBHOOKS_LEASE_TTL_SECONDS: '3',
    WEBHOOKS_REFRESH_MS: '100',
    WEBHOOKS_BACKLOG_INTERVAL_MS: '100',
  });

  it('killed mid-batch and restarted, re-sends the same batch with the same webhook-id and loses nothing', async () => {
    await addEndpoint(database.db, receiver.url);
    const first = await startWebhooks(env());
    const writing = writeConcurrently(database.db, {
      writers: 3,
      usersEach: 4,
      rounds: 40,
      pauseMs: 25,
    });
    await waitFor('deliveries', () => receiver.delivered().length >= 2, {
      whileRunning: first.webhooks,
    });
    receiver.behave({ kind: 'hang' });
    const hungAt = receiver.requests.length;
    await waitFor('a request in flight', () => receiver.requests.length > hungAt);
    const inFlight = receiver.requests[hungAt]!.id;
    // The backlog grows while the receiver hangs, and the process says so.
    await waitFor('a backlog in the metrics', async () => {
      const text = await (await fetch(`${first.opsUrl}/metrics`)).text();
      return /pulse_webhook_backlog_events\{endpoint="backend"\} [1-9]/.test(text);
    });
    first.webhooks.signal('SIGKILL');
    await first.webhooks.exited;
    receiver.behave({ kind: 'ok' });
    // The lease of the killed process expires (TTL 3 s); the new one takes over.
    const second = await startWebhooks(env());
    await writing;
    await waitForAllDelivered(database.db, receiver, 30_000);
    await expectCompleteDelivery(database.db, receiver);
    expect(receiver.delivered().map((r) => r.id)).to.include(inFlight);
    const metrics = await (await fetch(`${second.opsUrl}/metrics`)).text();
    expect(metrics).to.match(
      /pulse_webhook_requests_total\{endpoint="backend",outcome="delivered"\} [1-9]/,
    );
    expect(metrics).to.match(
      /pulse_webhook_delivery_delay_seconds_count\{endpoint="backend"\} [1-9]/,
    );
    // The secret never reaches the output.
    expect(first.webhooks.output() + second.webhooks.output()).not.to.include(SECRET.slice(6));
    expect(await second.webhooks.stop()).to.deep.equal({ code: 0, signal: null });
  });
});

describe('webhooks: the rules', () => {
  it('backs off with full jitter below an exponential ceiling, and never before Retry-After', () => {
    const options = { baseMs: 1000, maxMs: 60_000 };
    expect(retryDelayMs(1, options, undefined, () => 0.999)).to.equal(999);
    expect(retryDelayMs(4, options, undefined, () => 0.999)).to.equal(7992);
    expect(retryDelayMs(30, options, undefined, () => 0.999)).to.equal(59_940);
    expect(retryDelayMs(3, options, undefined, () => 0)).to.equal(0);
    expect(retryDelayMs(1, options, 5000, () => 0.5)).to.equal(5000);
    expect(retryDelayMs(1, options, 10 * 86_400_000, () => 0.5)).to.equal(3_600_000);
    expect(parseRetryAfter('3')).to.equal(3000);
    expect(parseRetryAfter(new Date(Date.now() + 10_000).toUTCString())).to.be.within(8000, 10_000);
    expect(parseRetryAfter('soon')).to.equal(undefined);
  });

  it('sends only to public https addresses unless private targets are allowed', async () => {
    for (const address of [
      '127.0.0.1',
      '10.1.2.3',
      '172.20.0.1',
      '192.168.1.1',
      '169.254.169.254',
      '100.64.0.1',
      '0.0.0.0',
      '::1',
      'fd00::1',
      'fe80::1',
      '::ffff:127.0.0.1',
    ])
      expect(isPrivateAddress(address), address).to.equal(true);
    for (const address of ['8.8.8.8', '1.1.1.1', '2606:4700:4700::1111'])
      expect(isPrivateAddress(address), address).to.equal(false);
    expect(refuseTargetUrl('https://hooks.example.com/x', false)).to.equal(undefined);
    expect(refuseTargetUrl('http://hooks.example.com/x', false)).to.match(/https only/);
    expect(refuseTargetUrl('https://10.0.0.1/x', false)).to.match(/not a public address/);
    expect(refuseTargetUrl('https://user:pw@hooks.example.com/', true)).to.match(/credentials/);
    expect(refuseTargetUrl('ftp://hooks.example.com/', true)).to.match(/not http/);
    expect(refuseTargetUrl('http://127.0.0.1:1/x', true)).to.equal(undefined);

    const strict = createHttpSender({
      timeoutMs: 1000,
      responseMaxBytes: 10,
      allowPrivateTargets: false,
    });
    const signal = new AbortController().signal;
    const request = { body: '{}', headers: {} };
    expect(await strict.send({ ...request, url: 'https://127.0.0.1:1/' }, signal)).to.include({
      outcome: 'refused_target',
    });
    // A name is judged by what it resolves to.
    expect(await strict.send({ ...request, url: 'https://localhost:1/' }, signal)).to.include({
      outcome: 'refused_target',
    });
    strict.close();
  });

  it('reads at most the response size limit, and a 2xx counts whatever the body', async () => {
    let closed = false;
    const server = createServer((req, res) => {
      req.resume();
      res.writeHead(200);
      const chunk = Buffer.alloc(64 * 1024, 'x');
      const pump = () => {
        while (res.write(chunk));
      };
      res.on('drain', pump);
      res.on('close', () => (closed = true));
      pump();
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const sender = createHttpSender({
      timeoutMs: 5000,
      responseMaxBytes: 1024,
      allowPrivateTargets: true,
    });
    try {
      const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
      const result = await sender.send(
        { url, body: '{}', headers: {} },
        new AbortController().signal,
      );
      expect(result).to.deep.equal({ outcome: 'delivered', status: 200 });
      await waitFor('the endless body cut off', () => closed);
    } finally {
      sender.close();
      server.closeAllConnections();
      server.close();
    }
  });

  it('validates the deliverer configuration', () => {
    const base = { DATABASE_URL: 'postgres://localhost/pulse' };
    const config = loadWebhooksConfig(base);
    expect(config).to.include({
      WEBHOOKS_BATCH_MAX_EVENTS: 1000,
      WEBHOOKS_RETRY_FOR_SECONDS: 86_400,
      WEBHOOKS_ALLOW_PRIVATE_TARGETS: false,
      METRICS_PORT: 9466,
    });
    expect(() =>
      loadWebhooksConfig({
        ...base,
        WEBHOOKS_TIMEOUT_MS: '20000',
        WEBHOOKS_LEASE_TTL_SECONDS: '30',
      }),
    )
      .to.throw(ConfigError)
      .with.property('message')
      .that.matches(/WEBHOOKS_TIMEOUT_MS must be at most a third of WEBHOOKS_LEASE_TTL_SECONDS/);
  });
});

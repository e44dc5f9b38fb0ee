import { once } from 'node:events';
import { connect, type Socket } from 'node:net';
import { Writable } from 'node:stream';
import { expect } from 'chai';
import { waitFor } from './support/entry-points.ts';
import { sql } from 'kysely';
import { bodyWeight, readWeight } from '../api/edge/admission.ts';
import { createLogger } from '../lib/infra/logger.ts';
import { startTestApp, type TestApp } from './support/app.ts';
import { createTestDatabase, lockPulse, type TestDatabase } from './support/database.ts';
import { expectError } from './support/http.ts';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** A raw TCP client: what it received, and when the server closed the connection. */
async function rawClient(baseUrl: string) {
  const { hostname, port } = new URL(baseUrl);
  const socket: Socket = connect({ host: hostname, port: Number(port) });
  await once(socket, 'connect');
  let received = '';
  socket.on('data', (chunk: Buffer) => (received += chunk.toString()));
  socket.on('error', () => undefined); // a reset is one way of being closed
  // Not events.once: it rejects on 'error', and a reset is an answer here, not a failure.
  const closed = new Promise<number>((resolve) => socket.once('close', () => resolve(Date.now())));
  return { socket, closed, received: () => received };
}

async function metric(app: TestApp, series: string): Promise<number | undefined> {
  const text = await (await app.get('/metrics')).text();
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

describe('overload and slow clients', function () {
  this.timeout(30_000);
  let database: TestDatabase;
  let app: TestApp | undefined;

  before(async () => {
    database = await createTestDatabase();
  });
  afterEach(async () => {
    await app?.close();
    app = undefined;
  });
  after(async () => {
    await database.drop();
  });

  it('gives back every admitted request once it is answered, failed or aborted', async () => {
    app = await startTestApp(database);
    const running = app;
    await Promise.all([
      running.post('/status/update', { user_id: 1 }),
      running.post('/status/update', [{ user_id: 2 }, { user_id: 3 }]),
      running.post('/status/update', { user_id: 'x' }), // 400
      running.post('/status/batch', [{ user_id: 1 }]),
      running.get('/status/1'),
      running.get('/status/abc'), // 400
    ]);
    // Aborted: the client announces a body and leaves before sending it.
    const client = await rawClient(running.baseUrl);
    client.socket.write(
      'POST /status/update HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n' +
        'Content-Length: 5000\r\n\r\n{"user_id":',
    );
    await waitFor('the request to be admitted', () => running.admission.inFlight > 0);
    expect(running.admission.inFlight).to.equal(1); // announced bytes weigh nothing until read
    client.socket.destroy();
    await waitFor('every admitted request given back', () => running.admission.inFlight === 0);
  });

  it('refuses past MAX_IN_FLIGHT_REQUESTS with 503 overloaded before reading the body, reads too, and loses nothing admitted', async () => {
    const lines: { level: number; msg: string; refused?: number }[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _encoding, done) {
        for (const line of chunk.toString().split('\n').filter(Boolean)) {
          lines.push(JSON.parse(line) as { level: number; msg: string; refused?: number });
        }
        done();
      },
    });
    app = await startTestApp(
      database,
      { MAX_IN_FLIGHT_REQUESTS: '2' },
      createLogger('pulse-api', 'info', sink),
    );
    const running = app;
    const release = await lockPulse(database.url); // heartbeats wait: two requests stay in flight
    let held: Promise<Response>[] = [];
    try {
      held = [101, 102].map((id) => running.post('/status/update', { user_id: id }));
      await waitFor(
        'two requests in flight',
        async () => (await metric(running, 'pulse_http_requests_in_flight')) === 2,
      );

      // Headers announcing a body that never comes: refused at once, so the body was not awaited.
      const client = await rawClient(running.baseUrl);
      client.socket.write(
        'POST /status/update HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n' +
          'Content-Length: 1000\r\n\r\n',
      );
      await waitFor('the refusal', () => client.received().includes('\r\n\r\n{'));
      expect(client.received()).to.match(/^HTTP\/1\.1 503 /);
      expect(client.received()).to.match(/\r\nRetry-After: 1\r\n/i);
      client.socket.destroy();

      const refusedRead = await running.get('/status/1');
      expect(refusedRead.headers.get('retry-after')).to.equal('1');
      await expectError(refusedRead, 503, 'overloaded');
      await expectError(await running.post('/status/batch', [{ user_id: 1 }]), 503, 'overloaded');
      await expectError(await running.post('/status/offline', { user_id: 1 }), 503, 'overloaded');
      expect((await running.get('/healthz')).status).to.equal(200); // probes are not counted
    } finally {
      await release();
    }
    for (const response of await Promise.all(held)) expect(response.status).to.equal(200);
    expect(await database.userIds()).to.include.members([101, 102]);
    expect((await app.post('/status/update', { user_id: 103 })).status).to.equal(200);
    expect(await metric(app, 'pulse_http_requests_refused_total{reason="in_flight"}')).to.equal(4);
    // One line says it is refusing; the refused requests get no access line each.
    expect(lines.filter((l) => l.msg.startsWith('overloaded'))).to.have.length(1);
    expect(lines.filter((l) => l.msg === 'request completed')).to.have.length(3);
    // And one that it is over, 5 s after the last refusal, with the count.
    await waitFor('the end line', () => lines.some((l) => l.msg === 'overload over'), {
      timeoutMs: 15_000,
    });
    expect(lines.find((l) => l.msg === 'overload over')).to.include({ level: 30, refused: 4 });
    expect(lines.filter((l) => l.level >= 50)).to.deep.equal([]); // the heap release did not fail
  });

  it('refuses heartbeats with 503 overloaded while the oldest queued one has waited past MAX_QUEUE_WAIT_MS', async () => {
    app = await startTestApp(database, {
      MAX_QUEUE_WAIT_MS: '100',
      HEARTBEAT_MAX_CONCURRENT_FLUSHES: '1',
    });
    const running = app;
    const release = await lockPulse(database.url);
    let held: Promise<Response>[] = [];
    try {
      // The first flush waits on the lock, the second heartbeat waits in the queue behind it.
      held = [running.post('/status/update', { user_id: 201 })];
      await waitFor('a flush waiting on the lock', async () => {
        const { rows } = await sql<{ waiting: number }>`
          SELECT count(*)::int AS waiting FROM pg_stat_activity
          WHERE datname = current_database() AND wait_event_type = 'Lock'`.execute(database.db);
        return rows[0]?.waiting === 1;
      });
      held.push(running.post('/status/update', { user_id: 202 }));
      await waitFor('a queued heartbeat', () => running.heartbeats.queuedIds === 1);
      await waitFor('a long queue wait', () => running.heartbeats.oldestQueuedMs() > 100);
      await expectError(await running.post('/status/update', { user_id: 203 }), 503, 'overloaded');
      await expectError(await running.get('/status/1'), 503, 'overloaded');
      expect(
        await metric(running, 'pulse_http_requests_refused_total{reason="queue_wait"}'),
      ).to.equal(2);
    } finally {
      await release();
    }
    for (const response of await Promise.all(held)) expect(response.status).to.equal(200);
    expect((await app.post('/status/update', { user_id: 204 })).status).to.equal(200);
    expect(await database.userIds())
      .to.include.members([201, 202, 204])
      .and.not.include(203);
  });

  it('weighs a request by the body it has read: one, plus one per started 4 KiB', async () => {
    expect(1 + bodyWeight(0)).to.equal(1);
    expect(1 + bodyWeight(4095)).to.equal(1);
    expect(1 + bodyWeight(4096)).to.equal(2);
    expect(1 + bodyWeight(22_000)).to.equal(6); // a 1,000-id batch
    expect(readWeight(1)).to.equal(1);
    expect(readWeight(1000)).to.equal(6); // a stream's snapshot of 1,000 ids, as the batch read

    app = await startTestApp(database, { MAX_IN_FLIGHT_REQUESTS: '4' });
    const running = app;
    const batch = (first: number) =>
      Array.from({ length: 800 }, (_, i) => ({ user_id: first + i })); // about 13.6 KB: weighs 4
    expect(1 + bodyWeight(JSON.stringify(batch(1)).length)).to.equal(4);
    // An empty house admits a request of any weight.
    expect((await running.post('/status/update', batch(1_000))).status).to.equal(200);

    const release = await lockPulse(database.url);
    let held: Promise<Response> | undefined;
    try {
      held = running.post('/status/update', { user_id: 301 });
      await waitFor(
        'one heartbeat in flight',
        async () => (await metric(running, 'pulse_http_requests_in_flight')) === 1,
      );
      await expectError(await running.post('/status/update', batch(2_000)), 503, 'overloaded');
      // A single heartbeat still fits beside the one in flight.
      const single = running.post('/status/update', { user_id: 302 });
      await waitFor(
        'two heartbeats in flight',
        async () => (await metric(running, 'pulse_http_requests_in_flight')) === 2,
      );
      await release();
      expect((await single).status).to.equal(200);
    } finally {
      await release();
    }
    expect((await held).status).to.equal(200);
    expect(await database.userIds())
      .to.include.members([1_000, 1_799, 301, 302])
      .and.not.include(2_000);
  });

  it('keeps back the refusal of a connection that ignores Retry-After until it is up, doubling it, and refuses a patient one at once', async () => {
    app = await startTestApp(database, { MAX_IN_FLIGHT_REQUESTS: '1' });
    const running = app;
    const release = await lockPulse(database.url);
    const clients: Awaited<ReturnType<typeof rawClient>>[] = [];
    try {
      const held = running.post('/status/update', { user_id: 401 }); // fills the house
      await waitFor(
        'one request in flight',
        async () => (await metric(running, 'pulse_http_requests_in_flight')) === 1,
      );
      const client = await rawClient(running.baseUrl);
      clients.push(client);
      const answers = () => client.received().split('HTTP/1.1 ').slice(1);
      /** Sends one request on the kept-alive connection; resolves with its answer and how long it took. */
      const ask = async () => {
        const before = answers().length;
        const started = Date.now();
        client.socket.write('GET /status/1 HTTP/1.1\r\nHost: x\r\n\r\n');
        await waitFor(
          'an answer',
          () => answers().length > before && answers()[before]!.includes('}'),
        );
        return { answer: answers()[before]!, ms: Date.now() - started };
      };
      const retryAfter = (answer: string) => /\r\nRetry-After: (\d+)\r\n/i.exec(answer)?.[1];

      const first = await ask();
      expect(first.answer).to.match(/^503 /);
      expect(retryAfter(first.answer)).to.equal('1');
      expect(first.ms).to.be.below(500);

      // Back at once: refused only when the second it was told to wait is up, and told 2 s now.
      const impatient = await ask();
      expect(impatient.answer).to.match(/^503 /);
      expect(impatient.ms).to.be.within(800, 5_000);
      expect(retryAfter(impatient.answer)).to.equal('2');

      // Waits the 2 s it was told: refused at once, told 1 s again.
      await sleep(2_100);
      const patient = await ask();
      expect(patient.answer).to.match(/^503 /);
      expect(patient.ms).to.be.below(500);
      expect(retryAfter(patient.answer)).to.equal('1');

      // Another connection is not punished for this one.
      const other = await rawClient(running.baseUrl);
      clients.push(other);
      const started = Date.now();
      other.socket.write('GET /status/1 HTTP/1.1\r\nHost: x\r\n\r\n');
      await waitFor('the other answer', () => other.received().includes('}'));
      expect(Date.now() - started).to.be.below(500);
      expect(retryAfter(other.received())).to.equal('1');

      // A refusal kept back is answered at once when the server shuts down.
      const keptBack = ask();
      await waitFor(
        'the fifth refusal',
        async () =>
          (await metric(running, 'pulse_http_requests_refused_total{reason="in_flight"}')) === 5,
      );
      const closing = Date.now();
      running.admission.close();
      const { answer } = await keptBack;
      expect(answer).to.match(/^503 /);
      expect(Date.now() - closing).to.be.below(500);
      await release();
      expect((await held).status).to.equal(200);
    } finally {
      await release();
      for (const client of clients) client.socket.destroy();
    }
  });

  it('reads and drops the body of a refusal it keeps back at once, not when it answers', async () => {
    app = await startTestApp(database, { MAX_IN_FLIGHT_REQUESTS: '1' });
    const running = app;
    const release = await lockPulse(database.url);
    let client: Awaited<ReturnType<typeof rawClient>> | undefined;
    try {
      const held = running.post('/status/update', { user_id: 402 }); // fills the house
      await waitFor(
        'one request in flight',
        async () => (await metric(running, 'pulse_http_requests_in_flight')) === 1,
      );
      client = await rawClient(running.baseUrl);
      const { socket, received } = client;
      socket.write('GET /status/1 HTTP/1.1\r\nHost: x\r\n\r\n');
      await waitFor('the first refusal', () => received().includes('}'));
      // Back at once: kept back a second, and told 2 s. Coming back at once again, the next
      // refusal waits 2 s: room enough, on a loaded machine, to hand over the body below.
      socket.write('GET /status/1 HTTP/1.1\r\nHost: x\r\n\r\n');
      await waitFor(
        'the second refusal',
        () => received().split('HTTP/1.1 ').length - 1 === 2 && received().endsWith('}'),
      );

      // Back at once (it ignores Retry-After): its refusal waits 2 s. 32 MB is more than the
      // kernel's socket buffers hold, so the client can hand all of it over only if the server
      // reads it while the refusal waits.
      const body = Buffer.alloc(32 * 1024 * 1024, 0x20);
      const sent = Date.now();
      socket.write(
        'POST /status/update HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n' +
          `Content-Length: ${body.length}\r\n\r\n`,
      );
      socket.write(body);
      await waitFor('the body handed over', () => socket.writableLength === 0);
      const handedOverMs = Date.now() - sent;
      const answeredBefore = received().split('HTTP/1.1 ').length - 1;
      await waitFor('the third refusal', () => received().split('HTTP/1.1 ').length - 1 === 3);
      const answeredMs = Date.now() - sent;
      expect(answeredBefore).to.equal(2); // the body was read before the refusal was answered
      expect(handedOverMs).to.be.below(answeredMs);
      expect(received().split('HTTP/1.1 ')[3]).to.match(/^503 /);
      await release();
      expect((await held).status).to.equal(200);
    } finally {
      await release();
      client?.socket.destroy();
    }
  });

  it('answers 408 and closes the connection of a client sending its body a byte at a time (HTTP_REQUEST_TIMEOUT_MS)', async () => {
    app = await startTestApp(database, {
      HTTP_REQUEST_TIMEOUT_MS: '1000',
      HTTP_HEADERS_TIMEOUT_MS: '500',
    });
    const client = await rawClient(app.baseUrl);
    const started = Date.now();
    client.socket.write(
      'POST /status/update HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n' +
        'Content-Length: 100\r\n\r\n',
    );
    // Stop once answered: a byte landing on the closed socket would make the server reset the
    // connection, and a reset discards an answer the client has not read yet.
    const drip = setInterval(() => {
      if (client.received() === '') client.socket.write(' ');
    }, 100);
    try {
      const closedAt = await client.closed;
      expect(closedAt - started).to.be.within(900, 5_000);
      expect(client.received()).to.match(/^HTTP\/1\.1 408 /);
    } finally {
      clearInterval(drip);
    }
  });

  it('answers 408 to a client that never finishes its headers (HTTP_HEADERS_TIMEOUT_MS)', async () => {
    app = await startTestApp(database, {
      HTTP_REQUEST_TIMEOUT_MS: '5000',
      HTTP_HEADERS_TIMEOUT_MS: '500',
    });
    const client = await rawClient(app.baseUrl);
    const started = Date.now();
    client.socket.write('GET /status/1 HTTP/1.1\r\nHost: x\r\n');
    const closedAt = await client.closed;
    expect(closedAt - started).to.be.within(400, 4_000);
    expect(client.received()).to.match(/^HTTP\/1\.1 408 /);
  });

  it('closes a connection silent for HTTP_SOCKET_IDLE_TIMEOUT_MS, and an idle keep-alive one after HTTP_KEEP_ALIVE_TIMEOUT_MS', async () => {
    app = await startTestApp(database, {
      HTTP_SOCKET_IDLE_TIMEOUT_MS: '300',
      HTTP_KEEP_ALIVE_TIMEOUT_MS: '10000',
    });
    const stalled = await rawClient(app.baseUrl);
    const started = Date.now();
    stalled.socket.write(
      'POST /status/update HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n' +
        'Content-Length: 10\r\n\r\n{',
    );
    expect((await stalled.closed) - started).to.be.within(250, 4_000);
    expect(stalled.received()).to.equal(''); // cut, not answered
    await app.close();

    app = await startTestApp(database, { HTTP_KEEP_ALIVE_TIMEOUT_MS: '300' });
    const idle = await rawClient(app.baseUrl);
    idle.socket.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
    const closedAt = await idle.closed;
    expect(idle.received()).to.match(/^HTTP\/1\.1 200 /);
    expect(idle.received()).to.match(/Keep-Alive: timeout=0?\d?/i);
    expect(closedAt - started).to.be.below(8_000);
  });

  it('accepts at most HTTP_MAX_CONNECTIONS connections at once', async () => {
    app = await startTestApp(database, { HTTP_MAX_CONNECTIONS: '2', STREAM_MAX_OPEN: '1' });
    const [first, second] = [await rawClient(app.baseUrl), await rawClient(app.baseUrl)];
    const third = await rawClient(app.baseUrl);
    await third.closed; // closed by the server as soon as it was accepted
    expect(third.received()).to.equal('');
    first.socket.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
    await waitFor('an answer', () => first.received().includes('{"status":"ok"}'));
    expect(first.received()).to.match(/^HTTP\/1\.1 200 /);
    first.socket.destroy();
    second.socket.destroy();
    await Promise.all([first.closed, second.closed]);
  });
});

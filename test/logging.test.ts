import { IncomingMessage } from 'node:http';
import { Socket } from 'node:net';
import { Writable } from 'node:stream';
import { expect } from 'chai';
import { sql } from 'kysely';
import { createLogger } from '../lib/infra/logger.ts';
import { startTestApp, type TestApp } from './support/app.ts';
import { createTestDatabase, type TestDatabase } from './support/database.ts';
import { ensureClientBuilt } from './support/client-build.ts';
import { startApi, waitFor } from './support/entry-points.ts';

interface LogLine {
  level: number;
  msg: string;
  name: string;
  req?: { id: string; method: string; url: string };
  res?: { statusCode: number };
  err?: { message: string; stack: string };
}

describe('structured logs', () => {
  let database: TestDatabase;
  let app: TestApp;
  let lines: LogLine[];

  async function start(level: string) {
    lines = [];
    const sink = new Writable({
      write(chunk: Buffer, _encoding, done) {
        for (const line of chunk.toString().split('\n').filter(Boolean))
          lines.push(JSON.parse(line) as LogLine);
        done();
      },
    });
    app = await startTestApp(database, {}, createLogger('pulse-api', level, sink));
  }

  beforeEach(async () => {
    database = await createTestDatabase();
  });
  afterEach(async () => {
    await app?.close();
    await database.drop();
  });

  it('writes one JSON line per request with the request id it answered with', async () => {
    await start('info');
    const response = await app.post('/status/update', { user_id: 5 });
    const id = response.headers.get('x-request-id');
    await app.get('/healthz'); // probes are not logged
    const requestLines = lines.filter((l) => l.req);
    expect(requestLines).to.have.length(1);
    const [line] = requestLines;
    expect(line).to.deep.include({ name: 'pulse-api', level: 30, msg: 'request completed' });
    expect(line!.req).to.deep.equal({ id, method: 'POST', url: '/status/update' });
    expect(line!.res).to.deep.equal({ statusCode: 200 });
  });

  it('logs an unexpected error once, at error level, with its cause', async () => {
    await start('info');
    await sql`ALTER TABLE pulse RENAME TO pulse_elsewhere`.execute(database.db);
    try {
      const response = await app.get('/status/1');
      expect(response.status).to.equal(500);
      const errors = lines.filter((l) => l.level >= 50);
      expect(errors).to.have.length(1);
      expect(errors[0]!.err!.message).to.match(/relation "pulse" does not exist/);
      expect(errors[0]!.req!.id).to.equal(response.headers.get('x-request-id'));
    } finally {
      await sql`ALTER TABLE pulse_elsewhere RENAME TO pulse`.execute(database.db);
    }
  });

  it('logs client errors only as the request line, and honours the level', async () => {
    await start('warn');
    await app.get('/status/abc');
    await app.post('/status/update', { user_id: 6 });
    expect(lines).to.deep.equal([]); // info lines are below LOG_LEVEL=warn, and a 400 is no error
  });

  it('logs a stream the client closed as closed, not as aborted', async () => {
    await start('info');
    const controller = new AbortController();
    const stream = await fetch(`${app.baseUrl}/status/stream?watch=1`, {
      signal: controller.signal,
    });
    const reader = stream.body!.getReader() as ReadableStreamDefaultReader<Uint8Array>;
    let received = '';
    while (!received.includes('event: snapshot')) {
      received += new TextDecoder().decode((await reader.read()).value);
    }
    controller.abort();
    const line = await waitFor('the stream line', () =>
      lines.find((l) => l.req?.url === '/status/stream?watch=1'),
    );
    expect(line).to.deep.include({ level: 30, msg: 'stream closed' });
  });

  it("logs the demo page's scripts and styles at debug only, the page itself at info", async () => {
    ensureClientBuilt();
    for (const level of ['info', 'debug']) {
      await app?.close();
      await start(level);
      for (const path of ['/demo/', '/demo/demo.js', '/client/index.js']) {
        expect((await app.get(path)).status, path).to.equal(200);
      }
      await waitFor('the request lines', () => lines.some((l) => l.req?.url === '/demo/'));
      const logged = lines.filter((l) => l.req).map((l) => `${l.level} ${l.req!.url}`);
      expect(logged.sort(), level).to.deep.equal(
        level === 'info' ? ['30 /demo/'] : ['20 /client/index.js', '20 /demo/demo.js', '30 /demo/'],
      );
    }
  });

  it("leaves Node's request prototype alone: a library may set req.id", async () => {
    await start('info'); // the app, its request log and error handler are loaded
    expect(Object.getOwnPropertyDescriptor(IncomingMessage.prototype, 'id')).to.equal(undefined);
    expect(Object.getOwnPropertyDescriptor(IncomingMessage.prototype, 'log')).to.equal(undefined);
    const req = new IncomingMessage(new Socket()) as IncomingMessage & { id?: unknown };
    req.id = 'set-by-pino-http';
    expect(req.id).to.equal('set-by-pino-http');
  });
});

describe('readable logs (LOG_FORMAT=pretty, as npm start prints them)', function () {
  this.timeout(60_000);
  let database: TestDatabase;
  before(async () => {
    database = await createTestDatabase();
  });
  after(async () => {
    await database.drop();
  });

  /** The API's output lines about one heartbeat, once it logged it. */
  async function heartbeatLines(level: string): Promise<{ lines: string[]; id: string }> {
    const { api, baseUrl } = await startApi({
      DATABASE_URL: database.url,
      LOG_FORMAT: 'pretty',
      LOG_LEVEL: level,
    });
    const answer = await fetch(`${baseUrl}/status/update`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ user_id: 3 }),
    });
    expect(answer.status).to.equal(200);
    await api.waitForOutput(/POST \/status\/update 200/);
    await api.stop();
    // The request's line and what pino-pretty printed under it (lines not starting with a time).
    const all = api.stdout().split('\n');
    const at = all.findIndex((line) => line.includes('POST /status/update 200'));
    const next = all.findIndex((line, i) => i > at && line.startsWith('['));
    return { lines: all.slice(at, next), id: answer.headers.get('x-request-id')! };
  }

  it('prints one line per request at info: method, path, status, time', async () => {
    const { lines, id } = await heartbeatLines('info');
    expect(lines, lines.join('\n')).to.have.length(1);
    expect(lines[0]).to.match(/INFO.*POST \/status\/update 200 \d+ ms$/);
    expect(lines.join('\n')).not.to.include(id);
  });

  it('adds the request details at debug', async () => {
    const { lines, id } = await heartbeatLines('debug');
    expect(lines[0]).to.match(/POST \/status\/update 200 \d+ ms$/);
    expect(lines.join('\n')).to.include(id);
  });
});

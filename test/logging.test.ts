import { Writable } from 'node:stream';
import { expect } from 'chai';
import { sql } from 'kysely';
import { createLogger } from '../lib/infra/logger.ts';
import { startTestApp, type TestApp } from './support/app.ts';
import { createTestDatabase, type TestDatabase } from './support/database.ts';

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
    await app.close();
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
});

import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { captureLog } from './support/log-capture.ts';
import { waitFor } from './support/entry-points.ts';
import { sql } from 'kysely';
import { freePort, startEmbeddedPostgres, type EmbeddedServer } from '../dev/embedded-postgres.ts';
import { openDatabase, type DatabaseHandle } from '../lib/infra/db.ts';
import { migrateToLatest } from '../lib/store/migrator.ts';
import { startTestApp, type TestApp } from './support/app.ts';
import { createTestDatabase, serverUrl, type TestDatabase } from './support/database.ts';
import { adminQuery } from './support/server.ts';
import { startTcpProxy, type TcpProxy } from './support/tcp-proxy.ts';

interface LogLine {
  level: number;
  msg: string;
  err?: { message: string; code?: string };
  failures?: number;
}

const APPLICATION_NAME = 'pulse-outage-log-test';
const SUMMARY_INTERVAL_MS = 300;

/**
 * Besides one access line per request (and overload lines, should a request be refused): one
 * line with the first failure's cause, a few summaries with counts, one line when back, and no
 * client, cancel key or stack anywhere.
 */
function expectBoundedOutageLog(raw: string[], lines: LogLine[]) {
  const outageLines = lines.filter(
    (l) => l.msg !== 'request completed' && !l.msg.startsWith('overload'),
  );
  expect(outageLines.map((l) => l.msg)).to.have.length.within(3, 30);
  const down = outageLines.filter((l) => l.msg === 'database unavailable');
  expect(down).to.have.length(1);
  expect(down[0]!.level).to.equal(50);
  expect(down[0]!.err!.message).to.be.a('string').and.not.equal('');
  expect(down[0]!.err).to.have.property('code'); // 57P01, ECONNRESET, ...
  const summaries = outageLines.filter((l) => l.msg === 'database still unavailable');
  expect(summaries).to.have.length.of.at.least(1);
  expect(summaries.reduce((sum, l) => sum + (l.failures ?? 0), 0)).to.be.above(0);
  expect(outageLines.filter((l) => l.msg === 'database available again')).to.have.length(1);
  expect(outageLines.map((l) => l.msg)).to.have.members([
    'database unavailable',
    ...summaries.map((l) => l.msg),
    'database available again',
  ]);
  expect(raw.join('\n')).not.to.match(/secretKey|processID|"client"|"_ending"|"stack"/);
}

describe('a restart as the API sees it (sessions ended, connections refused at a proxy): the log', function () {
  this.timeout(60_000);
  let database: TestDatabase;
  let proxy: TcpProxy;
  let behindProxy: DatabaseHandle;
  let app: TestApp;
  let raw: string[];
  let lines: LogLine[];

  before(async () => {
    database = await createTestDatabase();
    const target = new URL(database.url);
    proxy = await startTcpProxy({ targetHost: target.hostname, targetPort: Number(target.port) });
    const log = captureLog<LogLine>();
    ({ raw, lines } = log);
    const logger = log.logger;
    const url = proxy.rewriteUrl(database.url);
    behindProxy = openDatabase({
      connectionString: url,
      poolMax: 4,
      applicationName: APPLICATION_NAME,
      logger,
      outageSummaryIntervalMs: SUMMARY_INTERVAL_MS,
    });
    app = await startTestApp({ ...behindProxy, url }, {}, logger);
  });
  after(async () => {
    await app?.close();
    await behindProxy?.close();
    await proxy?.close();
    await database?.drop();
  });

  it('logs the first failure with its cause, a count while down, one line when back; loses no acknowledged heartbeat', async () => {
    const acknowledged: number[] = [];
    let refused = 0;
    let nextId = 1;
    let running = true;
    const worker = async () => {
      while (running) {
        const id = nextId++;
        const response = await app.post('/status/update', { user_id: id });
        if (response.status === 200) acknowledged.push(id);
        else refused += 1;
        await response.arrayBuffer();
        const read = await app.get(`/status/${id}`);
        if (read.status !== 200) refused += 1;
        await read.arrayBuffer();
      }
    };
    const workers = Array.from({ length: 12 }, worker);
    try {
      await waitFor('heartbeats before the restart', () => acknowledged.length >= 50, {
        timeoutMs: 15_000,
      });

      // The restart: the server ends every session (57P01), then refuses connections for a while.
      proxy.refuse();
      await adminQuery(
        serverUrl(),
        `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE application_name = '${APPLICATION_NAME}'`,
      );
      proxy.dropConnections();
      const acknowledgedBefore = acknowledged.length;
      await waitFor('requests refused while down', () => refused >= 100, { timeoutMs: 15_000 });
      await new Promise((resolve) => setTimeout(resolve, 4 * SUMMARY_INTERVAL_MS));
      proxy.accept();

      await waitFor(
        'the recovery line',
        () => lines.some((l) => l.msg === 'database available again'),
        { timeoutMs: 15_000 },
      );
      await waitFor('heartbeats after', () => acknowledged.length >= acknowledgedBefore + 50, {
        timeoutMs: 15_000,
      });
    } finally {
      running = false;
      await Promise.all(workers);
    }

    // Nothing acknowledged was lost.
    const stored = new Set(await database.userIds());
    expect(acknowledged.filter((id) => !stored.has(id))).to.deep.equal([]);

    // A handful of lines, however many requests failed.
    expectBoundedOutageLog(raw, lines);
    expect(refused).to.be.at.least(100);
  });
});

describe('a real PostgreSQL restart under load: the log', function () {
  this.timeout(120_000);
  const APPLICATION = 'pulse-restart-log-test';
  let dataParent: string;
  let options: Parameters<typeof startEmbeddedPostgres>[0];
  let server: EmbeddedServer | undefined;
  let handle: DatabaseHandle | undefined;
  let app: TestApp | undefined;
  const { raw, lines, logger } = captureLog<LogLine>();

  before(async () => {
    dataParent = mkdtempSync(path.join(tmpdir(), 'pulse-restart-'));
    chmodSync(dataParent, 0o755); // the server runs as the unprivileged postgres user
    options = {
      dataDir: path.join(dataParent, 'pg'),
      port: await freePort(),
      persistent: true, // its data must survive the stop
      postgresFlags: ['-c', 'fsync=off'],
    };
    server = await startEmbeddedPostgres(options);
    handle = openDatabase({
      connectionString: server.url,
      poolMax: 4,
      applicationName: APPLICATION,
      logger,
      outageSummaryIntervalMs: SUMMARY_INTERVAL_MS,
    });
    await migrateToLatest(handle.db);
    app = await startTestApp({ ...handle, url: server.url }, {}, logger);
  });
  after(async () => {
    await app?.close();
    await handle?.close();
    await server?.stop();
    rmSync(dataParent, { recursive: true, force: true });
  });

  it('stops PostgreSQL (fast shutdown) and starts it again: a bounded log, no client in it, no acknowledged heartbeat lost', async () => {
    const running = app!;
    const acknowledged: number[] = [];
    let failed = 0;
    let nextId = 1;
    let loading = true;
    const worker = async () => {
      while (loading) {
        const id = nextId++;
        const response = await running.post('/status/update', { user_id: id });
        if (response.status === 200) acknowledged.push(id);
        else failed += 1;
        await response.arrayBuffer();
        // While the server is down every attempt fails at once: do not spin.
        if (response.status !== 200) await new Promise((resolve) => setTimeout(resolve, 5));
      }
    };
    const workers = Array.from({ length: 12 }, worker);
    try {
      await waitFor('heartbeats before the restart', () => acknowledged.length >= 50, {
        timeoutMs: 15_000,
      });
      await server!.stop(); // SIGINT: a fast shutdown, every session ended with 57P01
      server = undefined;
      const acknowledgedBefore = acknowledged.length;
      await waitFor('heartbeats refused while down', () => failed >= 100, { timeoutMs: 15_000 });
      await new Promise((resolve) => setTimeout(resolve, 4 * SUMMARY_INTERVAL_MS));
      server = await startEmbeddedPostgres(options);
      await waitFor(
        'the recovery line',
        () => lines.some((l) => l.msg === 'database available again'),
        { timeoutMs: 30_000 },
      );
      await waitFor('heartbeats after', () => acknowledged.length >= acknowledgedBefore + 50, {
        timeoutMs: 15_000,
      });
    } finally {
      loading = false;
      await Promise.all(workers);
    }

    const { rows } = await sql<{ user_id: string }>`SELECT user_id FROM pulse`.execute(handle!.db);
    const stored = new Set(rows.map((row) => Number(row.user_id)));
    expect(acknowledged.filter((id) => !stored.has(id))).to.deep.equal([]);

    expectBoundedOutageLog(raw, lines);
    expect(failed).to.be.at.least(100);
  });
});

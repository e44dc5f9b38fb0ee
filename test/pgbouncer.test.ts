/**
 * API and sweeper behind a real PgBouncer (Debian's `pgbouncer`) in transaction mode, with the
 * statement timeout set the way docs/operations.md advises: on the database (or role), because
 * PgBouncer drops the startup parameter. CI installs pgbouncer and sets PULSE_REQUIRE_PGBOUNCER=1;
 * elsewhere the test is skipped, saying so, when the binary is missing.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { chmodSync, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir, userInfo } from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { sql } from 'kysely';
import pg from 'pg';
import { pino } from 'pino';
import { freePort } from '../dev/embedded-postgres.ts';
import {
  DEFAULT_STATEMENT_TIMEOUT_MS,
  openDatabase,
  type DatabaseHandle,
} from '../lib/infra/db.ts';
import { checkStatementTimeout } from '../lib/infra/statement-timeout.ts';
import { recordHeartbeats } from '../lib/store/pulse-store.ts';
import { Sweeper } from '../sweeper/sweeper.ts';
import { startTestApp, type TestApp } from './support/app.ts';
import {
  createTestDatabase,
  lockPulse,
  silentLogger,
  type TestDatabase,
} from './support/database.ts';

const PGBOUNCER = ['/usr/sbin/pgbouncer', '/usr/bin/pgbouncer'].find((file) => existsSync(file));

interface Bouncer {
  /** `databaseUrl` with PgBouncer's host and port. */
  url: string;
  stop(): Promise<void>;
}

/** PgBouncer on a free port, transaction pooling, in front of `databaseUrl`. */
async function startPgBouncer(binary: string, databaseUrl: string): Promise<Bouncer> {
  const target = new URL(databaseUrl);
  const port = await freePort();
  const folder = mkdtempSync(path.join(tmpdir(), 'pulse-pgbouncer-'));
  chmodSync(folder, 0o755);
  const user = decodeURIComponent(target.username || 'postgres');
  const server = [
    `host=${target.hostname}`,
    `port=${target.port || 5432}`,
    `dbname=${target.pathname.slice(1)}`,
    `user=${user}`,
    ...(target.password ? [`password=${decodeURIComponent(target.password)}`] : []),
  ].join(' ');
  const write = (name: string, text: string) => {
    writeFileSync(path.join(folder, name), text);
    chmodSync(path.join(folder, name), 0o644);
    return path.join(folder, name);
  };
  const authFile = write('users.txt', `"${user}" ""\n`);
  const ini = write(
    'pgbouncer.ini',
    [
      '[databases]',
      `pulse = ${server}`,
      '[pgbouncer]',
      'listen_addr = 127.0.0.1',
      `listen_port = ${port}`,
      'unix_socket_dir =',
      'auth_type = trust',
      `auth_file = ${authFile}`,
      'pool_mode = transaction',
      'default_pool_size = 4',
      // node-pg sends statement_timeout at connect; PgBouncer would refuse the connection.
      'ignore_startup_parameters = statement_timeout',
      '',
    ].join('\n'),
  );
  // PgBouncer refuses to run as root: drop to nobody then.
  const args = userInfo().uid === 0 ? ['-u', 'nobody', ini] : [ini];
  const child: ChildProcess = spawn(binary, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  child.stderr!.on('data', (chunk: Buffer) => (log += chunk.toString()));
  const exited = once(child, 'exit');
  const url = new URL(databaseUrl);
  url.hostname = '127.0.0.1';
  url.port = String(port);
  url.password = '';
  url.pathname = '/pulse';
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      await exited;
    }
    rmSync(folder, { recursive: true, force: true });
  };
  // Ready when a query goes through.
  for (let attempt = 0; ; attempt += 1) {
    const client = new pg.Client({ connectionString: url.toString() });
    client.on('error', () => undefined);
    const ok = await client.connect().then(
      () => client.query('SELECT 1').then(() => true),
      () => false,
    );
    await client.end().catch(() => undefined);
    if (ok) break;
    if (attempt > 100 || child.exitCode !== null) {
      await stop();
      throw new Error(`pgbouncer did not start:\n${log}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return { url: url.toString(), stop };
}

describe('behind PgBouncer in transaction mode', function () {
  this.timeout(60_000);
  const STATEMENT_TIMEOUT_MS = 1000;
  let database: TestDatabase;
  let bouncer: Bouncer;
  let pooled: DatabaseHandle & { url: string };
  let app: TestApp;

  before(async function () {
    if (!PGBOUNCER) {
      if (process.env.PULSE_REQUIRE_PGBOUNCER) {
        throw new Error('pgbouncer is not installed (apt-get install pgbouncer), CI requires it');
      }
      console.log('    pgbouncer is not installed here: skipping the PgBouncer tests');
      this.skip();
    }
    database = await createTestDatabase();
    // The advice of docs/operations.md (per role works the same way; 1 s to keep the test short).
    await sql
      .raw(`ALTER DATABASE ${database.name} SET statement_timeout = '${STATEMENT_TIMEOUT_MS}ms'`)
      .execute(database.db);
    bouncer = await startPgBouncer(PGBOUNCER, database.url);
    // As the API and the sweeper open theirs: statement timeout asked for at connect, and named
    // statements off, as docs/operations.md advises before PgBouncer 1.21 (Debian's is 1.18).
    pooled = {
      url: bouncer.url,
      ...openDatabase({
        connectionString: bouncer.url,
        poolMax: 4,
        applicationName: 'pulse-api',
        logger: silentLogger,
        statementTimeoutMs: DEFAULT_STATEMENT_TIMEOUT_MS,
        preparedStatements: false,
      }),
    };
    // No offline detector here: its UPDATE would wait on the lock below beside the heartbeat's.
    app = await startTestApp(pooled, {
      OFFLINE_DETECTOR: 'false',
      DATABASE_PREPARED_STATEMENTS: 'off',
    });
  });
  after(async () => {
    await app?.close();
    await pooled?.close();
    await bouncer?.stop();
    await database?.drop();
  });

  it('the API records heartbeats and answers reads through it', async () => {
    const update = await app.post('/status/update', [{ user_id: 1 }, { user_id: 2 }]);
    expect(update.status).to.equal(200);
    expect(await (await app.get('/status/1')).json()).to.deep.include({
      user_id: 1,
      is_online: true,
    });
    const batch = await app.post('/status/batch', [{ user_id: 2 }, { user_id: 3 }]);
    const rows = (await batch.json()) as Array<Record<string, unknown>>;
    expect(rows.map(({ user_id, is_online }) => ({ user_id, is_online }))).to.deep.equal([
      { user_id: 2, is_online: true },
      { user_id: 3, is_online: false },
    ]);
    expect(rows.map((row) => row.last_seen === null)).to.deep.equal([false, true]);
    expect((await app.get('/readyz')).status).to.equal(200);
  });

  it('with named statements left on, every heartbeat lands: a lost name turns them off, warning once', async () => {
    const lines: Array<Record<string, unknown>> = [];
    const logger = pino(
      { level: 'warn' },
      { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) },
    );
    const named = openDatabase({
      connectionString: bouncer.url,
      poolMax: 2,
      applicationName: 'pulse-api',
      logger,
    });
    try {
      // Two connections at once: PgBouncer hands a name parsed for one to the other's server
      // connection (or a connection a server connection that never saw it).
      for (let flush = 0; flush < 5; flush += 1) {
        await Promise.all([
          recordHeartbeats(named.db, [1000 + flush]),
          recordHeartbeats(named.db, [2000 + flush]),
        ]);
      }
    } finally {
      await named.close();
    }
    const ids = await database.userIds();
    for (let flush = 0; flush < 5; flush += 1) {
      expect(ids).to.include.members([1000 + flush, 2000 + flush]);
    }
    expect(lines.map((line) => line.msg)).to.deep.equal([
      'the database lost a named statement (PgBouncer before 1.21 in transaction mode?): running them unnamed from now on; set DATABASE_PREPARED_STATEMENTS=off',
    ]);
  });

  it('a stuck heartbeat statement is cancelled by the server: 503, and the lock queue empties', async () => {
    const release = await lockPulse(database.url);
    try {
      const started = Date.now();
      const stuck = await app.post('/status/update', { user_id: 7 });
      expect(stuck.status).to.equal(503);
      // Well before the client-side query timeout (16 s): the server cancelled it.
      expect(Date.now() - started).to.be.below(DEFAULT_STATEMENT_TIMEOUT_MS);
      const { rows } = await sql<{ waiting: string }>`
        SELECT count(*) AS waiting FROM pg_locks
        WHERE NOT granted AND relation = 'pulse'::regclass
          -- Test databases are copies of one template: every pulse has the same oid.
          AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`.execute(
        database.db,
      );
      expect(Number(rows[0]?.waiting)).to.equal(0);
    } finally {
      await release();
    }
    expect((await app.post('/status/update', { user_id: 7 })).status).to.equal(200);
  });

  it('the sweeper sweeps through it, and a stuck batch is cancelled and reported failed', async () => {
    await database.putRow(100, 600);
    await database.putRow(101, 0);
    const sweeper = new Sweeper(pooled.db, silentLogger, {
      schedule: '0 0 1 1 *',
      olderThanSeconds: 30,
      batchSize: 10,
      leaseTtlSeconds: 30,
    });
    const swept = await sweeper.sweepOnce();
    expect(swept).to.include({ outcome: 'done', leaseHeld: true, deleted: 1 });
    expect(await database.userIds())
      .to.include(101)
      .and.not.include(100);

    await database.putRow(102, 600);
    const release = await lockPulse(database.url);
    try {
      const stuck = await sweeper.sweepOnce();
      expect(stuck.outcome).to.equal('failed');
      expect(stuck.error).to.match(/statement timeout/);
    } finally {
      await release();
    }
    expect(await sweeper.sweepOnce()).to.include({ outcome: 'done', deleted: 1 });
    await sweeper.stop();
  });

  it('the start-up check sees the timeout the server enforces, and warns when there is none', async () => {
    const lines: Array<Record<string, unknown>> = [];
    const logger = pino(
      { level: 'warn' },
      { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) },
    );
    expect(await checkStatementTimeout(pooled.db, DEFAULT_STATEMENT_TIMEOUT_MS, logger)).to.equal(
      STATEMENT_TIMEOUT_MS,
    );
    expect(lines).to.deep.equal([]);
    // What PgBouncer makes of the startup parameter alone: no limit at all.
    await sql.raw(`ALTER DATABASE ${database.name} RESET statement_timeout`).execute(database.db);
    const fresh = openDatabase({
      connectionString: database.url,
      poolMax: 1,
      applicationName: 'pulse-test',
      logger: silentLogger,
    });
    try {
      expect(await checkStatementTimeout(fresh.db, DEFAULT_STATEMENT_TIMEOUT_MS, logger)).to.equal(
        0,
      );
    } finally {
      await fresh.close();
    }
    expect(lines).to.have.length(1);
    expect(lines[0]!.msg).to.match(/does not cancel statements after 15 s.*ALTER ROLE/);
  });
});

import { expect } from 'chai';
import { sql } from 'kysely';
import { pino } from 'pino';
import { openDatabase, type DatabaseHandle } from '../lib/infra/db.ts';
import type { Logger } from '../lib/infra/logger.ts';
import { sweepExpiredBatch } from '../lib/store/pulse-store.ts';
import { readSweepLease } from '../lib/store/sweep-lease.ts';
import { Sweeper, type SweepReport, type SweeperOptions } from '../sweeper/sweeper.ts';
import {
  createTestDatabase,
  lockPulse,
  silentLogger,
  type TestDatabase,
} from './support/database.ts';
import { runEntryPoint, startEntryPoint, startSweeper, waitFor } from './support/entry-points.ts';
import { metricValue } from './support/metrics.ts';
import { startTcpProxy, type TcpProxy } from './support/tcp-proxy.ts';

const OLDER_THAN = 30;
const EXPIRED_AGE = 120;

/** Rows first..last, every one with last_hb = now() - ageSeconds. */
async function putRows(database: TestDatabase, first: number, last: number, ageSeconds: number) {
  await sql`INSERT INTO pulse (user_id, last_hb)
    SELECT i, now() - make_interval(secs => ${ageSeconds}) FROM generate_series(${first}::bigint, ${last}::bigint) i
    ON CONFLICT (user_id) DO UPDATE SET last_hb = EXCLUDED.last_hb`.execute(database.db);
}

/** Expired rows at odd ids, fresh rows at even ids, 1..2n. */
async function putMixedRows(database: TestDatabase, n: number) {
  await sql`INSERT INTO pulse (user_id, last_hb)
    SELECT i, CASE WHEN i % 2 = 1 THEN now() - make_interval(secs => ${EXPIRED_AGE}) ELSE now() END
    FROM generate_series(1, ${2 * n}::bigint) i`.execute(database.db);
}

async function countRows(database: TestDatabase, expired?: boolean): Promise<number> {
  let query = database.db.selectFrom('pulse').select((eb) => eb.fn.countAll<string>().as('n'));
  if (expired !== undefined) {
    const cutoff = sql<Date>`now() - make_interval(secs => ${OLDER_THAN})`;
    query = query.where('last_hb', expired ? '<' : '>=', cutoff);
  }
  return Number((await query.executeTakeFirstOrThrow()).n);
}

function captureLogger(level = 'info'): {
  logger: Logger;
  lines: Array<Record<string, unknown>>;
} {
  const lines: Array<Record<string, unknown>> = [];
  const logger = pino(
    { level },
    { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) },
  );
  return { logger, lines };
}

function options(overrides: Partial<SweeperOptions> = {}): SweeperOptions {
  return {
    schedule: '* * * * * *',
    olderThanSeconds: OLDER_THAN,
    batchSize: 100,
    leaseTtlSeconds: 30,
    ...overrides,
  };
}

describe('sweeper', function () {
  this.timeout(30_000);
  let database: TestDatabase;
  const cleanups: Array<() => Promise<void> | void> = [];

  beforeEach(async () => {
    database = await createTestDatabase();
  });
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
    await database.drop();
  });

  function sweeperOn(
    db: DatabaseHandle,
    overrides: Partial<SweeperOptions> = {},
    logger = silentLogger,
  ) {
    const sweeper = new Sweeper(db.db, logger, options(overrides));
    cleanups.push(() => sweeper.stop());
    return sweeper;
  }

  function extraPool(url = database.url): DatabaseHandle {
    const handle = openDatabase({
      connectionString: url,
      poolMax: 3,
      applicationName: 'pulse-test-sweeper',
      logger: silentLogger,
    });
    cleanups.push(() => handle.close());
    return handle;
  }

  describe('sweepExpiredBatch', () => {
    it('deletes only rows older than the sweep age within the key range, and moves the cursor', async () => {
      for (let id = 1; id <= 10; id += 1)
        await database.putRow(id, id % 2 ? EXPIRED_AGE : OLDER_THAN - 5);
      const first = await sweepExpiredBatch(database.db, {
        cursor: null,
        batchSize: 4,
        olderThanSeconds: OLDER_THAN,
      });
      expect(first).to.deep.equal({ deleted: 2, nextCursor: '4' });
      expect(await database.userIds()).to.deep.equal([2, 4, 5, 6, 7, 8, 9, 10]);
      const second = await sweepExpiredBatch(database.db, {
        cursor: '4',
        batchSize: 100,
        olderThanSeconds: OLDER_THAN,
      });
      expect(second).to.deep.equal({ deleted: 3, nextCursor: '10' });
      expect(await database.userIds()).to.deep.equal([2, 4, 6, 8, 10]);
      const done = await sweepExpiredBatch(database.db, {
        cursor: '10',
        batchSize: 100,
        olderThanSeconds: OLDER_THAN,
      });
      expect(done).to.deep.equal({ deleted: 0, nextCursor: null });
    });
  });

  describe('one sweep', () => {
    it('deletes every expired row in batches, keeps fresh rows, reports, and releases the lease', async () => {
      await putMixedRows(database, 500);
      const reports: SweepReport[] = [];
      const sweeper = sweeperOn(database, { batchSize: 70, onSweep: (r) => reports.push(r) });
      const started = performance.now();
      const report = await sweeper.sweepOnce();
      const elapsedMs = performance.now() - started;
      expect(report).to.include({
        outcome: 'done',
        leaseHeld: true,
        deleted: 500,
        batches: Math.ceil(1000 / 70),
      });
      // The whole sweep lasts at least its longest batch and at most what the caller waited.
      expect(report.maxBatchMs).to.be.a('number').above(0);
      expect(report.durationMs).to.be.within(Math.floor(report.maxBatchMs), Math.ceil(elapsedMs));
      expect(Date.parse(report.startedAt)).to.be.closeTo(Date.now() - elapsedMs, 1000);
      expect(reports).to.deep.equal([report]);
      expect(await countRows(database, true)).to.equal(0);
      expect(await countRows(database, false)).to.equal(500);
      expect((await readSweepLease(database.db))?.holder).to.equal(null);
    });

    it('never deletes a row refreshed while the sweep runs', async () => {
      await putRows(database, 1, 600, EXPIRED_AGE);
      const sweeper = sweeperOn(database, { batchSize: 5, batchPauseMs: 2 });
      const sweeping = sweeper.sweepOnce();
      await waitFor('the sweep to start deleting', async () => (await countRows(database)) < 600);
      await putRows(database, 590, 600, 0); // heartbeats for users the sweep has not reached yet
      const report = await sweeping;
      expect(report.outcome).to.equal('done');
      expect(await database.userIds()).to.deep.equal(Array.from({ length: 11 }, (_, i) => 590 + i));
      expect(report.deleted).to.equal(589);
    });

    it('rejects an invalid cron expression when constructed', () => {
      expect(
        () => new Sweeper(database.db, silentLogger, options({ schedule: '61 * * * *' })),
      ).to.throw(/invalid cron expression "61 \* \* \* \*"/);
    });
  });

  describe('several sweepers', () => {
    it('started together, delete every expired row exactly once between them, without errors', async () => {
      await putMixedRows(database, 3000);
      const runs: Array<{ report: SweepReport }> = [];
      const sweepers = Array.from({ length: 4 }, () => sweeperOn(extraPool(), { batchSize: 50 }));
      await Promise.all(
        sweepers.map(async (sweeper) => runs.push({ report: await sweeper.sweepOnce() })),
      );
      const outcomes = runs.map((r) => r.report.outcome);
      expect(outcomes).to.not.include('failed');
      expect(outcomes).to.include('skipped');
      const sweeps = runs.filter((r) => r.report.leaseHeld);
      expect(sweeps.reduce((sum, r) => sum + r.report.deleted, 0)).to.equal(3000);
      expect(
        runs
          .filter((r) => !r.report.leaseHeld)
          .every((r) => r.report.deleted === 0 && r.report.batches === 0),
      ).to.equal(true);
      expect(await countRows(database, true)).to.equal(0);
      expect(await countRows(database, false)).to.equal(3000);
    });

    it('sweeping over and over, never interleave the batches of two sweeps', async () => {
      // Every DELETE statement is logged with the sweeper that ran it (its application_name).
      await sql`CREATE TABLE delete_log (app text, at timestamptz)`.execute(database.db);
      await sql`CREATE FUNCTION log_delete() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN INSERT INTO delete_log VALUES (current_setting('application_name'), clock_timestamp()); RETURN NULL; END $$`.execute(
        database.db,
      );
      await sql`CREATE TRIGGER log_delete AFTER DELETE ON pulse FOR EACH STATEMENT EXECUTE FUNCTION log_delete()`.execute(
        database.db,
      );
      await putMixedRows(database, 1500);
      const sweeps: Array<{ app: string; from: number; to: number }> = [];
      // Until two sweepers have each held the lease (at least three sweeps between them).
      const enough = () => new Set(sweeps.map((s) => s.app)).size > 1 && sweeps.length >= 3;
      const deadline = Date.now() + 30_000;
      await Promise.all(
        [0, 1, 2].map(async (n) => {
          const app = `sweeper-${n}`;
          const handle = openDatabase({
            connectionString: database.url,
            poolMax: 2,
            applicationName: app,
            logger: silentLogger,
          });
          cleanups.push(() => handle.close());
          const sweeper = sweeperOn(handle, { batchSize: 50 });
          while (!enough() && Date.now() < deadline) {
            const report = await sweeper.sweepOnce();
            expect(report.outcome).to.be.oneOf(['done', 'skipped']);
            if (report.leaseHeld) {
              const from = Date.parse(report.startedAt);
              sweeps.push({ app, from, to: from + report.durationMs + 1 });
            }
            // Jitter, so the sweepers' attempts interleave differently each round.
            await new Promise((resolve) => setTimeout(resolve, Math.random() * 10));
          }
        }),
      );
      const { rows } = await sql<{
        app: string;
        at: Date;
      }>`SELECT app, at FROM delete_log ORDER BY at`.execute(database.db);
      // Each lease-holding sweep's DELETEs span [first, last]; two such spans must never overlap.
      const spans = sweeps
        .map((sweep) => {
          const mine = rows.filter(
            (r) =>
              r.app === sweep.app &&
              r.at.getTime() >= sweep.from - 1 &&
              r.at.getTime() <= sweep.to + 1,
          );
          return {
            app: sweep.app,
            first: mine[0]?.at.getTime() ?? NaN,
            last: mine.at(-1)?.at.getTime() ?? NaN,
          };
        })
        .filter((span) => !Number.isNaN(span.first))
        .sort((a, b) => a.first - b.first);
      expect(
        new Set(spans.map((s) => s.app)).size,
        'more than one sweeper should get turns',
      ).to.be.above(1);
      expect(spans.length).to.be.at.least(3);
      for (const a of spans) {
        for (const b of spans) {
          if (a.app === b.app) continue; // one Sweeper's own sweeps are sequential by construction
          expect(
            a.last < b.first || b.last < a.first,
            `${a.app} and ${b.app} swept at the same time`,
          ).to.equal(true);
        }
      }
      expect(await countRows(database, true)).to.equal(0);
      expect(await countRows(database, false)).to.equal(1500);
    });

    it("skip while another holds the lease, say so in the log, and take over when a crashed holder's lease expires", async () => {
      await putRows(database, 1, 100, EXPIRED_AGE);
      await sql`INSERT INTO pulse_sweeper_lease (id, holder, expires_at)
        VALUES (1, 'crashed-sweeper', now() + interval '1.5 seconds')`.execute(database.db);
      const sweeper = sweeperOn(database);
      const skipped = await sweeper.sweepOnce();
      expect(skipped).to.include({ outcome: 'skipped', leaseHeld: false, deleted: 0, batches: 0 });
      expect(await countRows(database)).to.equal(100);

      const { logger, lines } = captureLogger('debug');
      const scheduled = sweeperOn(database, {}, logger);
      scheduled.start();
      await waitFor('a sweep after the lease expired', () =>
        lines.some((l) => l.msg === 'sweep finished'),
      );
      const skipLine = lines.find(
        (l) => l.msg === 'another sweeper holds the sweep lease: skipping this tick',
      );
      // Skipping is routine (another sweeper's turn): debug, not info.
      expect(skipLine).to.include({ level: 20 });
      expect(skipLine).to.include({ outcome: 'skipped', leaseHeld: false, deleted: 0 });
      expect(lines.find((l) => l.msg === 'sweep finished')).to.include({
        outcome: 'done',
        leaseHeld: true,
        deleted: 100,
      });
      expect(await countRows(database)).to.equal(0);
    });

    it('log a sweep that deleted rows at info and an idle one (nothing expired) at debug', async () => {
      await putRows(database, 1, 10, EXPIRED_AGE);
      const { logger, lines } = captureLogger('debug');
      const scheduled = sweeperOn(database, {}, logger);
      scheduled.start();
      await waitFor('an idle sweep after the first one', () =>
        lines.some((l) => l.msg === 'sweep finished' && l.deleted === 0),
      );
      await scheduled.stop();
      const finished = lines.filter((l) => l.msg === 'sweep finished');
      expect(finished[0]).to.include({ deleted: 10, level: 30 });
      const idle = finished.filter((l) => l.deleted === 0);
      expect(idle.length).to.be.greaterThan(0);
      for (const line of idle) expect(line.level).to.equal(20);
    });

    it('stop sweeping at the next batch when their lease was taken over', async () => {
      await putRows(database, 1, 2000, EXPIRED_AGE);
      const sweeper = sweeperOn(database, { batchSize: 5, batchPauseMs: 2 });
      const sweeping = sweeper.sweepOnce();
      await waitFor('the sweep to start deleting', async () => (await countRows(database)) < 2000);
      await sql`UPDATE pulse_sweeper_lease SET holder = 'other-sweeper'`.execute(database.db);
      const report = await sweeping;
      expect(report).to.include({ outcome: 'lease-lost', leaseHeld: true });
      const left = await countRows(database);
      expect(left).to.be.above(0);
      expect(report.deleted).to.equal(2000 - left);
      expect((await readSweepLease(database.db))?.holder).to.equal('other-sweeper');
    });
  });

  describe('a lease that expires in real time (1 s)', () => {
    const lease = { leaseTtlSeconds: 1, batchPauseMs: 450, batchSize: 250 };

    it('refuses a pause between batches of half the lease or more, naming both values', () => {
      expect(
        () =>
          new Sweeper(
            database.db,
            silentLogger,
            options({ leaseTtlSeconds: 1, batchPauseMs: 500 }),
          ),
      ).to.throw(/batch pause \(500 ms\) must be less than half of the lease time-to-live \(1 s\)/);
    });

    it('several sweepers pausing just under half the lease sweep every expired row, never losing the lease', async () => {
      await putMixedRows(database, 1000);
      const reports: SweepReport[] = [];
      const sweepers = [0, 1, 2].map(() =>
        sweeperOn(extraPool(), { ...lease, onSweep: (r) => reports.push(r) }),
      );
      for (const sweeper of sweepers) sweeper.start();
      await waitFor('a complete sweep', () => reports.some((r) => r.outcome === 'done'), {
        timeoutMs: 20_000,
      });
      const done = reports.find((r) => r.outcome === 'done')!;
      expect(done.durationMs, 'pauses must add up to more than the lease').to.be.above(1000);
      expect(
        reports.filter((r) => r.outcome === 'lease-lost' || r.outcome === 'failed'),
      ).to.deep.equal([]);
      expect(await countRows(database, true)).to.equal(0);
      expect(await countRows(database, false)).to.equal(1000);
    });

    it('when the holder is killed mid-sweep, another takes over once the lease lapses and sweeps every expired row', async () => {
      await putMixedRows(database, 1000);
      const holder = startEntryPoint('sweeper', {
        args: ['--once'],
        env: {
          DATABASE_URL: database.url,
          LOG_LEVEL: 'silent',
          SWEEP_LEASE_TTL_SECONDS: '1',
          SWEEP_BATCH_PAUSE_MS: '450',
          SWEEP_BATCH_SIZE: '250',
        },
      });
      cleanups.push(() => void holder.signal('SIGKILL'));
      await waitFor(
        'the first sweeper to start deleting',
        async () => (await countRows(database, true)) < 1000,
        { timeoutMs: 20_000 },
      );
      const crashed = (await readSweepLease(database.db))?.holder;
      // No release: the lease must lapse by itself.
      await holder.stop('SIGKILL');
      expect(crashed).to.be.a('string');
      expect(await countRows(database, true), 'killed mid-sweep').to.be.above(0);

      const reports: SweepReport[] = [];
      const others = [0, 1].map(() =>
        sweeperOn(extraPool(), { ...lease, onSweep: (r) => reports.push(r) }),
      );
      for (const sweeper of others) sweeper.start();
      await waitFor('a sweep by another sweeper', () => reports.some((r) => r.outcome === 'done'), {
        timeoutMs: 20_000,
      });
      expect(
        reports.filter((r) => r.outcome === 'lease-lost' || r.outcome === 'failed'),
      ).to.deep.equal([]);
      expect(reports.find((r) => r.outcome === 'done')?.holder).not.to.equal(crashed);
      expect(await countRows(database, true)).to.equal(0);
      expect(await countRows(database, false)).to.equal(1000);
    });
  });

  describe('on a schedule', () => {
    it('never overlaps ticks when a sweep lasts longer than the interval', async () => {
      await putRows(database, 1, 2500, EXPIRED_AGE);
      const { logger, lines } = captureLogger();
      const runs: SweepReport[] = [];
      const sweeper = sweeperOn(
        database,
        { batchSize: 5, batchPauseMs: 4, onSweep: (r) => runs.push(r) },
        logger,
      );
      sweeper.start();
      await waitFor('a finished sweep', () => runs.some((r) => r.outcome === 'done'), {
        timeoutMs: 20_000,
      });
      await sweeper.stop();
      const done = runs.find((r) => r.outcome === 'done')!;
      expect(done.durationMs, 'the test needs a sweep longer than the 1 s interval').to.be.above(
        1100,
      );
      expect(
        lines.some((l) => l.msg === 'previous sweep still running: skipping this tick'),
      ).to.equal(true);
      const intervals = runs.map(
        (r) => [Date.parse(r.startedAt), Date.parse(r.startedAt) + r.durationMs] as const,
      );
      for (let i = 1; i < intervals.length; i += 1)
        expect(intervals[i]![0]).to.be.at.least(intervals[i - 1]![1] - 5);
      expect(runs.reduce((sum, r) => sum + r.deleted, 0)).to.equal(2500);
      expect(lines.find((l) => l.msg === 'sweep finished')).to.include({
        deleted: 2500,
        leaseHeld: true,
        outcome: 'done',
      });
    });

    it('survives the database going away mid-sweep and finishes on a later tick', async function () {
      this.timeout(90_000);
      const target = new URL(database.url);
      const proxy: TcpProxy = await startTcpProxy({
        targetHost: target.hostname,
        targetPort: Number(target.port || 5432),
      });
      cleanups.push(() => proxy.close());
      await putMixedRows(database, 1500);
      const { logger, lines } = captureLogger();
      const runs: SweepReport[] = [];
      const sweeper = sweeperOn(
        extraPool(proxy.rewriteUrl(database.url)),
        { batchSize: 5, batchPauseMs: 1, onSweep: (r) => runs.push(r) },
        logger,
      );
      sweeper.start();
      await waitFor(
        'the sweep to start deleting',
        async () => (await countRows(database, true)) < 1500,
      );
      await proxy.outage(1500);
      await waitFor('a failed sweep', () => runs.some((r) => r.outcome === 'failed'));
      await waitFor(
        'a complete sweep after the outage',
        () => runs.some((r) => r.outcome === 'done'),
        { timeoutMs: 60_000 },
      );
      expect(lines.some((l) => l.msg === 'sweep failed; the next tick tries again')).to.equal(true);
      expect(await countRows(database, true)).to.equal(0);
      expect(await countRows(database, false)).to.equal(1500);
      expect(proxy.acceptedCount).to.be.above(1);
    });
  });

  describe('the sweeper process', function () {
    this.timeout(90_000);
    const env = (extra: Record<string, string> = {}) => ({
      DATABASE_URL: database.url,
      LOG_LEVEL: 'info',
      ...extra,
    });
    const scrape = async (opsUrl: string) =>
      (await fetch(`${opsUrl}/metrics`).catch(() => undefined))?.text();

    it('serves /healthz, /readyz and /metrics on METRICS_PORT, and the sweep series move', async () => {
      await putRows(database, 1, 300, EXPIRED_AGE);
      const { sweeper, opsUrl } = await startSweeper(env({ SWEEP_SCHEDULE: '* * * * * *' }));
      const metrics = await waitFor(
        'a sweep to show in the metrics',
        async () => {
          const text = await scrape(opsUrl);
          return text && metricValue(text, 'pulse_sweep_rows_deleted_total') === 300 && text;
        },
        { timeoutMs: 15_000, whileRunning: sweeper },
      );
      const done = metricValue(metrics, 'pulse_sweeps_total{outcome="done"}');
      expect(done).to.be.at.least(1);
      // Every sweep that held the lock was timed; none was skipped.
      expect(metricValue(metrics, 'pulse_sweep_duration_seconds_count')).to.equal(done);
      expect(metricValue(metrics, 'pulse_sweep_skipped_total')).to.equal(0);
      expect(metricValue(metrics, 'pulse_sweep_last_success_timestamp_seconds')).to.be.closeTo(
        Date.now() / 1000,
        30,
      );
      // The sweeper keeps its connection between sweeps.
      expect(metricValue(metrics, 'pulse_pg_pool_connections{state="total"}')).to.be.at.least(1);
      expect((await fetch(`${opsUrl}/healthz`)).status).to.equal(200);
      const ready = await fetch(`${opsUrl}/readyz`);
      expect(ready.status).to.equal(200);
      expect(await ready.json()).to.deep.equal({ status: 'ready' });
      expect((await fetch(`${opsUrl}/nope`)).status).to.equal(404);
      expect(await sweeper.stop()).to.deep.equal({ code: 0, signal: null });
    });

    it('counts skipped ticks when another sweeper holds the lease', async () => {
      await putRows(database, 1, 10, EXPIRED_AGE);
      await sql`INSERT INTO pulse_sweeper_lease (id, holder, renewed_at, expires_at)
        VALUES (1, 'someone-else', now(), now() + interval '1 hour')
        ON CONFLICT (id) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at`.execute(
        database.db,
      );
      const { sweeper, opsUrl } = await startSweeper(env({ SWEEP_SCHEDULE: '* * * * * *' }));
      await waitFor(
        'a skipped tick in the metrics',
        async () => /^pulse_sweep_skipped_total [1-9]/m.test((await scrape(opsUrl)) ?? ''),
        { timeoutMs: 15_000, whileRunning: sweeper },
      );
      expect(await countRows(database, true)).to.equal(10);
      expect((await sweeper.stop()).code).to.equal(0);
    });

    it('exits 0 after finishing the current batch on SIGTERM mid-sweep', async () => {
      await putRows(database, 1, 20_000, EXPIRED_AGE);
      const proc = startEntryPoint('sweeper', {
        env: env({
          METRICS_PORT: '0',
          SWEEP_SCHEDULE: '* * * * * *',
          SWEEP_BATCH_SIZE: '5',
          SWEEP_BATCH_PAUSE_MS: '2',
        }),
      });
      await waitFor(
        'the sweep to start deleting',
        async () => (await countRows(database)) < 19_900,
        {
          timeoutMs: 45_000,
          whileRunning: proc,
        },
      );
      const { code } = await proc.stop('SIGTERM');
      expect(code, proc.stderr()).to.equal(0);
      const left = await countRows(database);
      expect(left, 'SIGTERM should have arrived mid-sweep').to.be.above(0);
      const stopped = proc.logLines().find((l) => l.msg === 'sweep stopped');
      expect(stopped).to.include({ outcome: 'stopped', leaseHeld: true, deleted: 20_000 - left });
      expect((await readSweepLease(database.db))?.holder).to.equal(null);
    });

    it('--once prints the sweep report as one JSON line', async () => {
      await putMixedRows(database, 300);
      const started = Date.now();
      const run = await runEntryPoint('sweeper', {
        env: env({ SWEEP_BATCH_SIZE: '100' }),
        args: ['--once'],
      });
      const elapsedMs = Date.now() - started;
      expect(run.code, run.stderr).to.equal(0);
      const lines = run.stdout.trim().split('\n');
      expect(lines).to.have.length(1);
      const report = JSON.parse(lines[0]!) as SweepReport;
      expect(report).to.include({ outcome: 'done', leaseHeld: true, deleted: 300, batches: 6 });
      expect(report.durationMs).to.be.within(Math.floor(report.maxBatchMs), elapsedMs);
      expect(await countRows(database, true)).to.equal(0);
    });

    describe('--once on a signal, like the scheduled sweeper', () => {
      /** A --once sweep stuck in its DELETE behind a table lock held by the test. */
      async function stuckOnce(env: Record<string, string>) {
        await putRows(database, 1, 10, EXPIRED_AGE);
        const release = await lockPulse(database.url);
        cleanups.push(release);
        const proc = startEntryPoint('sweeper', {
          env: { DATABASE_URL: database.url, LOG_LEVEL: 'info', SWEEP_BATCH_SIZE: '100', ...env },
          args: ['--once'],
        });
        await waitFor(
          'the sweep to wait for the table lock',
          async () => {
            const { rows } = await sql<{ n: string }>`
            SELECT count(*) AS n FROM pg_stat_activity
            WHERE datname = current_database() AND application_name = 'pulse-sweeper'
              AND wait_event_type = 'Lock'`.execute(database.db);
            return Number(rows[0]?.n) > 0;
          },
          { timeoutMs: 30_000, whileRunning: proc },
        );
        return proc;
      }

      it('exits 1 when the sweep outlasts SHUTDOWN_TIMEOUT_SECONDS after SIGTERM', async () => {
        const proc = await stuckOnce({ SHUTDOWN_TIMEOUT_SECONDS: '1' });
        const signalled = Date.now();
        const { code } = await proc.stop('SIGTERM');
        expect(code, proc.stderr()).to.equal(1);
        expect(Date.now() - signalled, 'not before the timeout').to.be.at.least(900);
        expect(proc.stdout()).to.match(/shutdown timed out: forcing exit/);
      });

      it('exits 1 on a second signal', async () => {
        const proc = await stuckOnce({ SHUTDOWN_TIMEOUT_SECONDS: '60' });
        proc.signal('SIGTERM');
        await proc.waitForOutput('shutting down');
        expect(await proc.stop('SIGTERM'), proc.stderr()).to.deep.equal({ code: 1, signal: null });
        expect(proc.stdout()).to.match(/second signal: forcing exit/);
      });
    });

    it('refuses to start with an invalid cron expression', async () => {
      const run = await runEntryPoint('sweeper', { env: env({ SWEEP_SCHEDULE: 'every minute' }) });
      expect(run.code).to.equal(1);
      expect(run.stderr).to.match(/SWEEP_SCHEDULE must be a valid cron expression/);
    });
  });
});

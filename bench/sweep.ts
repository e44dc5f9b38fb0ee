/**
 * Sweep benchmark: `expiredRows` expired rows spread evenly among `freshRows` fresh ones, swept by
 * the real Sweeper (lease, batch transactions) while single heartbeats keep flowing at a fixed
 * rate through a pg pool (the API's own upsert, recordHeartbeats). Measures the sweep time, rows
 * deleted per second, the longest batch transaction, and heartbeat latency before vs during.
 *
 *   npm run bench:sweep                                   1M expired among 2M fresh
 *   npm run bench:sweep -- --expired 100000 --fresh 200000  smaller
 *
 *   npm run bench:sweep -- --last-seen both                 the same sweep with last seen off, then
 *                                                         on (the cost of recording it), one run
 *
 * Options (flags or env): --expired/BENCH_EXPIRED_ROWS, --fresh/BENCH_FRESH_ROWS,
 * --last-seen on|off|both (pulse_settings.last_seen_enabled; default on, as shipped),
 * --batch-size/SWEEP_BATCH_SIZE, --pause-ms/SWEEP_BATCH_PAUSE_MS, --rate/BENCH_HEARTBEAT_RATE
 * (heartbeats per second), --baseline-seconds/BENCH_BASELINE_SECONDS, --json (one JSON line only).
 * The database is DATABASE_URL's server (a scratch database is created and dropped there), or an
 * embedded PostgreSQL when DATABASE_URL is unset.
 */
import { cpus, totalmem } from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { sql } from 'kysely';
import { openDatabase, type DatabaseHandle } from '../lib/infra/db.ts';
import { createLogger } from '../lib/infra/logger.ts';
import { recordHeartbeats, updatePresenceSettings } from '../lib/store/pulse-store.ts';
import { Sweeper, type SweepReport } from '../sweeper/sweeper.ts';
import { openBenchDatabase } from './support.ts';

export interface SweepBenchmarkOptions {
  /** A server URL; a scratch database is created on it. Embedded PostgreSQL when undefined. */
  databaseUrl?: string | undefined;
  expiredRows?: number;
  freshRows?: number;
  batchSize?: number;
  batchPauseMs?: number;
  /** Single heartbeats per second, sent open-loop (latency includes waiting for the pool). */
  heartbeatRate?: number;
  heartbeatPoolSize?: number;
  baselineSeconds?: number;
  /** Whether the sweep records last seen (pulse_settings.last_seen_enabled). Default true. */
  lastSeen?: boolean;
  /** Progress messages (stderr by default in the CLI). */
  log?: (message: string) => void;
}

export interface LatencySummary {
  count: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
}

export interface SweepBenchmarkResult {
  expiredRows: number;
  freshRows: number;
  batchSize: number;
  batchPauseMs: number;
  heartbeatRate: number;
  lastSeen: boolean;
  /** Rows in pulse_last_seen after the sweep. */
  lastSeenRows: number;
  sweep: SweepReport & { rowsPerSecond: number };
  /** p99Ratio = during.p99Ms / before.p99Ms; `after` (same length as `before`) shows the noise. */
  heartbeats: {
    before: LatencySummary;
    during: LatencySummary;
    after: LatencySummary;
    p99Ratio: number;
  };
  freshRowsLeft: number;
  expiredRowsLeft: number;
  targets: { sweepUnder15s: boolean; p99AtMost2x: boolean; batchesUnder250ms: boolean };
  machine: { cpus: number; cpuModel: string; memoryGb: number; postgres: string; node: string };
}

// Expired rows are an hour old; fresh rows stay fresh for 10 minutes even on a slow load.
const OLDER_THAN_SECONDS = 600;

function summarize(latencies: number[]): LatencySummary {
  const sorted = [...latencies].sort((a, b) => a - b);
  const at = (q: number) =>
    sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? NaN;
  const round = (n: number) => Math.round(n * 100) / 100;
  return {
    count: sorted.length,
    p50Ms: round(at(0.5)),
    p99Ms: round(at(0.99)),
    maxMs: round(sorted.at(-1) ?? NaN),
  };
}

/** True when row `i` (1-based) is one of the expired ones: `expired` of `total`, evenly spread. */
const isExpired = (i: number, expired: number, total: number) =>
  Math.floor((i * expired) / total) !== Math.floor(((i - 1) * expired) / total);

/**
 * Sends single heartbeats for random fresh users at a fixed rate until stopped (open loop: a slow
 * heartbeat does not hold the next ones back). Latency is measured from the call, so time spent
 * waiting for a pool connection counts, as it would in the API.
 */
function startHeartbeats(db: DatabaseHandle['db'], rate: number, pick: () => number) {
  /** [issued at, latency] of every completed heartbeat, both in ms on the performance clock. */
  const samples: Array<[number, number]> = [];
  let errors = 0;
  let firstError: string | undefined;
  let inFlight = 0;
  let due = performance.now();
  const timer = setInterval(() => {
    const now = performance.now();
    while (due <= now) {
      due += 1000 / rate;
      const issued = performance.now();
      inFlight += 1;
      recordHeartbeats(db, [pick()])
        .then(() => samples.push([issued, performance.now() - issued]))
        .catch((error: unknown) => {
          errors += 1;
          firstError ??= error instanceof Error ? error.message : String(error);
        })
        .finally(() => (inFlight -= 1));
    }
  }, 1);
  return {
    /** Latencies of the heartbeats issued in [from, to). */
    window(from: number, to: number): number[] {
      return samples.filter(([issued]) => issued >= from && issued < to).map(([, ms]) => ms);
    },
    get errors() {
      return errors;
    },
    get firstError() {
      return firstError;
    },
    /** Stops sending and waits for the heartbeats still in flight. */
    async stop() {
      clearInterval(timer);
      while (inFlight > 0) await new Promise((resolve) => setTimeout(resolve, 5));
    },
  };
}

export async function runSweepBenchmark(
  options: SweepBenchmarkOptions = {},
): Promise<SweepBenchmarkResult> {
  const expiredRows = options.expiredRows ?? 1_000_000;
  const freshRows = options.freshRows ?? 2_000_000;
  const batchSize = options.batchSize ?? 10_000;
  const batchPauseMs = options.batchPauseMs ?? 0;
  const heartbeatRate = options.heartbeatRate ?? 1000;
  const baselineSeconds = options.baselineSeconds ?? 5;
  const log = options.log ?? (() => undefined);
  const total = expiredRows + freshRows;
  const logger = createLogger('pulse-bench', 'silent');

  const scratch = await openBenchDatabase(`pulse_bench_sweep_${process.pid}`, options.databaseUrl);
  const databaseUrl = scratch.url;

  const heartbeatDb = openDatabase({
    connectionString: databaseUrl,
    poolMax: options.heartbeatPoolSize ?? 8,
    applicationName: 'pulse-bench-heartbeats',
    logger,
  });
  const sweeperDb = openDatabase({
    connectionString: databaseUrl,
    poolMax: 2,
    applicationName: 'pulse-bench-sweeper',
    logger,
  });
  try {
    await updatePresenceSettings(heartbeatDb.db, { lastSeenEnabled: options.lastSeen ?? true });
    log(`loading ${expiredRows} expired and ${freshRows} fresh rows`);
    const { rows: version } = await sql<{
      v: string;
    }>`SELECT current_setting('server_version') AS v`.execute(heartbeatDb.db);
    const chunk = 500_000;
    for (let first = 1; first <= total; first += chunk) {
      const last = Math.min(total, first + chunk - 1);
      await sql`INSERT INTO pulse (user_id, last_hb)
        SELECT i, CASE WHEN (i * ${expiredRows}::bigint / ${total}::bigint) <> ((i - 1) * ${expiredRows}::bigint / ${total}::bigint)
                       THEN now() - interval '1 hour' ELSE now() END
        FROM generate_series(${first}::bigint, ${last}::bigint) i`.execute(heartbeatDb.db);
    }
    // What autovacuum would have done by the time rows expire (visibility map, statistics).
    await sql`VACUUM ANALYZE pulse`.execute(heartbeatDb.db);
    // Flush the load's dirty pages now, so no checkpoint of the load lands in the measured windows
    // (needs superuser or pg_checkpoint; skipped otherwise).
    await sql`CHECKPOINT`
      .execute(heartbeatDb.db)
      .catch(() => log('CHECKPOINT not allowed: skipped'));

    const pickFresh = () => {
      for (;;) {
        const i = 1 + Math.floor(Math.random() * total);
        if (!isExpired(i, expiredRows, total)) return i;
      }
    };
    log(`heartbeats at ${heartbeatRate}/s: warm-up, then ${baselineSeconds} s without a sweep`);
    // Open every pool connection first, so connecting is not measured as heartbeat latency.
    const poolSize = options.heartbeatPoolSize ?? 8;
    await Promise.all(
      Array.from({ length: poolSize }, () => sql`SELECT 1`.execute(heartbeatDb.db)),
    );
    const heartbeats = startHeartbeats(heartbeatDb.db, heartbeatRate, pickFresh);
    const sleep = (seconds: number) =>
      new Promise((resolve) => setTimeout(resolve, seconds * 1000));
    await sleep(2); // warm-up, not measured
    const beforeFrom = performance.now();
    await sleep(baselineSeconds);
    log(
      `sweeping (batch size ${batchSize}, pause ${batchPauseMs} ms), then ${baselineSeconds} s more heartbeats`,
    );
    const sweeper = new Sweeper(sweeperDb.db, logger, {
      schedule: '* * * * *',
      olderThanSeconds: OLDER_THAN_SECONDS,
      batchSize,
      leaseTtlSeconds: 30,
      batchPauseMs,
    });
    const sweepFrom = performance.now();
    const report = await sweeper.sweepOnce();
    const sweepTo = performance.now();
    await sleep(baselineSeconds);
    const afterTo = performance.now();
    await heartbeats.stop();
    const before = summarize(heartbeats.window(beforeFrom, sweepFrom));
    const during = summarize(heartbeats.window(sweepFrom, sweepTo));
    const after = summarize(heartbeats.window(sweepTo, afterTo));
    if (report.outcome !== 'done')
      throw new Error(`the sweep ended with ${report.outcome}: ${report.error ?? ''}`);
    if (heartbeats.errors > 0)
      throw new Error(
        `${heartbeats.errors} heartbeats failed, the first with: ${heartbeats.firstError}`,
      );

    const counts = await sql<{ expired: string; fresh: string }>`
      SELECT count(*) FILTER (WHERE last_hb < now() - make_interval(secs => ${OLDER_THAN_SECONDS})) AS expired,
             count(*) FILTER (WHERE last_hb >= now() - make_interval(secs => ${OLDER_THAN_SECONDS})) AS fresh
      FROM pulse`.execute(heartbeatDb.db);
    const lastSeenRows = await sql<{ n: string }>`
      SELECT count(*) AS n FROM pulse_last_seen`.execute(heartbeatDb.db);
    const p99Ratio = Math.round((during.p99Ms / before.p99Ms) * 100) / 100;
    return {
      expiredRows,
      freshRows,
      batchSize,
      batchPauseMs,
      heartbeatRate,
      lastSeen: options.lastSeen ?? true,
      lastSeenRows: Number(lastSeenRows.rows[0]?.n),
      sweep: { ...report, rowsPerSecond: Math.round(report.deleted / (report.durationMs / 1000)) },
      heartbeats: { before, during, after, p99Ratio },
      expiredRowsLeft: Number(counts.rows[0]?.expired),
      freshRowsLeft: Number(counts.rows[0]?.fresh),
      targets: {
        sweepUnder15s: report.durationMs < 15_000,
        p99AtMost2x: p99Ratio <= 2,
        batchesUnder250ms: report.maxBatchMs < 250,
      },
      machine: {
        cpus: cpus().length,
        cpuModel: cpus()[0]?.model ?? 'unknown',
        memoryGb: Math.round(totalmem() / 2 ** 30),
        postgres: version[0]?.v ?? 'unknown',
        node: process.version,
      },
    };
  } finally {
    await heartbeatDb.close();
    await sweeperDb.close();
    await scratch.close();
  }
}

function formatTable(r: SweepBenchmarkResult): string {
  const yes = (ok: boolean) => (ok ? 'yes' : 'NO');
  return [
    `rows: ${r.expiredRows} expired among ${r.freshRows} fresh; batch size ${r.batchSize}, pause ${r.batchPauseMs} ms; heartbeats ${r.heartbeatRate}/s; last seen ${r.lastSeen ? 'on' : 'off'} (${r.lastSeenRows} recorded)`,
    `sweep: ${r.sweep.deleted} rows in ${(r.sweep.durationMs / 1000).toFixed(2)} s (${r.sweep.rowsPerSecond} rows/s), ${r.sweep.batches} batches, longest batch transaction ${r.sweep.maxBatchMs} ms`,
    `heartbeat latency before: p50 ${r.heartbeats.before.p50Ms} ms, p99 ${r.heartbeats.before.p99Ms} ms (${r.heartbeats.before.count} heartbeats)`,
    `heartbeat latency during: p50 ${r.heartbeats.during.p50Ms} ms, p99 ${r.heartbeats.during.p99Ms} ms (${r.heartbeats.during.count} heartbeats), p99 ratio ${r.heartbeats.p99Ratio}`,
    `heartbeat latency after:  p50 ${r.heartbeats.after.p50Ms} ms, p99 ${r.heartbeats.after.p99Ms} ms (${r.heartbeats.after.count} heartbeats)`,
    `left after the sweep: ${r.expiredRowsLeft} expired, ${r.freshRowsLeft} fresh`,
    `targets: sweep < 15 s ${yes(r.targets.sweepUnder15s)}; p99 <= 2x ${yes(r.targets.p99AtMost2x)}; every batch < 250 ms ${yes(r.targets.batchesUnder250ms)}`,
    `machine: ${r.machine.cpus} x ${r.machine.cpuModel}, ${r.machine.memoryGb} GB, PostgreSQL ${r.machine.postgres}, Node ${r.machine.node}`,
  ].join('\n');
}

async function cli(): Promise<void> {
  const { values } = parseArgs({
    options: {
      expired: { type: 'string' },
      fresh: { type: 'string' },
      'batch-size': { type: 'string' },
      'pause-ms': { type: 'string' },
      rate: { type: 'string' },
      'baseline-seconds': { type: 'string' },
      json: { type: 'boolean', default: false },
      'last-seen': { type: 'string', default: 'on' },
    },
  });
  const env = process.env;
  const num = (flag: string | undefined, variable: string | undefined): number | undefined => {
    const raw = flag ?? variable;
    if (raw === undefined || raw === '') return undefined;
    const value = Number(raw);
    if (!Number.isFinite(value) || value < 0) throw new Error(`not a number: ${raw}`);
    return value;
  };
  const options: SweepBenchmarkOptions = {
    databaseUrl: env.DATABASE_URL || undefined,
    log: (m) => console.error(`[bench:sweep] ${m}`),
  };
  const set = <K extends keyof SweepBenchmarkOptions>(
    key: K,
    value: SweepBenchmarkOptions[K] | undefined,
  ) => {
    if (value !== undefined) options[key] = value;
  };
  set('expiredRows', num(values.expired, env.BENCH_EXPIRED_ROWS));
  set('freshRows', num(values.fresh, env.BENCH_FRESH_ROWS));
  set('batchSize', num(values['batch-size'], env.SWEEP_BATCH_SIZE));
  set('batchPauseMs', num(values['pause-ms'], env.SWEEP_BATCH_PAUSE_MS));
  set('heartbeatRate', num(values.rate, env.BENCH_HEARTBEAT_RATE));
  set('baselineSeconds', num(values['baseline-seconds'], env.BENCH_BASELINE_SECONDS));
  const modes = { on: [true], off: [false], both: [false, true] }[values['last-seen']];
  if (!modes) throw new Error(`--last-seen must be on, off or both: ${values['last-seen']}`);
  const results: SweepBenchmarkResult[] = [];
  for (const lastSeen of modes) {
    const result = await runSweepBenchmark({ ...options, lastSeen });
    results.push(result);
    if (!values.json) console.log(formatTable(result));
    console.log(JSON.stringify(result));
  }
  const [off, on] = results;
  if (off && on) {
    const ratio = (a: number, b: number) => Math.round((a / b) * 100) / 100;
    console.log(
      `last seen on vs off: sweep time x${ratio(on.sweep.durationMs, off.sweep.durationMs)}, longest batch x${ratio(on.sweep.maxBatchMs, off.sweep.maxBatchMs)}, heartbeat p99 during the sweep x${ratio(on.heartbeats.during.p99Ms, off.heartbeats.during.p99Ms)}`,
    );
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(path.resolve(process.argv[1])).href) {
  cli().catch((error: unknown) => {
    console.error(error);
    process.exit(1);
  });
}

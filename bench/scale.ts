/**
 * npm run bench:scale: what one user and one heartbeat cost, at 1,000,000 and 10,000,000 rows,
 * written to one JSON file (bench/results/scale.json) that the capacity model and the charts read.
 *
 *   flock /tmp/pulse-bench.lock npm run bench:scale                       1e6 and 1e7 rows
 *   flock /tmp/pulse-bench.lock npm run bench:scale -- --rows 1e6,1e7,5e7  more
 *
 * Flags: --rows (comma-separated table sizes, ascending), --seconds (per load scenario, 5),
 * --redis-keys (Option B keys, 1e6; 0 skips Option B), --streams (open live streams, 2000; 0
 * skips them), --log-price-rounds (the change log's price on the first size: alternating rounds
 * of the heartbeat upsert before the log and today's, 5; 0 skips it), --out (the JSON file).
 * Env: DATABASE_URL (a server on this machine: a scratch database is created and dropped there;
 * unset: an embedded PostgreSQL), REDIS_URL (redis://127.0.0.1:6379).
 *
 * For each size the table is filled to that many rows (every tenth row an hour-old expired one,
 * never sent heartbeats), then: bytes per row, database and API CPU per heartbeat for single
 * heartbeats with group commit, with one statement per request and for gateway batches,
 * /status/batch of 1,000 ids, and one sweep of the expired rows. Then, on the largest table, open
 * live streams: API memory per stream, and API and database CPU per open stream and second. Database CPU is the CPU time of
 * the PostgreSQL processes serving the API's connections (and autovacuum in the database), read
 * from /proc; the server must run on this machine for it. Prints its estimated duration first,
 * and stops itself (cleaning up) past twice that.
 */
import http from 'node:http';
import { cpus, hostname, loadavg, totalmem } from 'node:os';
import { writeFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import autocannon from 'autocannon';
import { openDatabase } from '../lib/infra/db.ts';
import { createLogger } from '../lib/infra/logger.ts';
import { Sweeper } from '../sweeper/sweeper.ts';
import { measureLogPrice, type LogPrice } from './change-log-price.ts';
import { measureOptionB, type OptionBResult } from './option-b-redis.ts';
import { processCpuSeconds, watchBackends } from './process-cpu.ts';
import { openBenchDatabase, startApi, type ApiProcess, type BenchDatabase } from './support.ts';

const root = fileURLToPath(new URL('..', import.meta.url));
const ID_LIST = 1000;
/** Rows whose id is a multiple of this are loaded expired and never get a heartbeat. */
const EXPIRED_EVERY = 10;
const EXPIRED_AGE_SECONDS = 86_400;
const SWEEP_OLDER_THAN_SECONDS = 3_600;

export interface LoadScenario {
  connections: number;
  idsPerRequest: number;
  requestsPerSecond: number;
  /** Heartbeats (or ids read) per second answered with 2xx. */
  idsPerSecond: number;
  p50Ms: number;
  p99Ms: number;
  failed: number;
  /** PostgreSQL CPU (client backends + autovacuum) per heartbeat or id, in microseconds. */
  dbCpuUsPerId: number;
  dbCpuUsPerIdBackendsOnly: number;
  dbCpuUsPerRequest: number;
  apiCpuUsPerId: number;
  apiCpuUsPerRequest: number;
  /** API CPU seconds per wall second: 1.0 means one core kept busy. */
  apiCoresBusy: number;
}

export interface SizeResult {
  rows: number;
  storage: { atRest: StorageFigures; afterLoad: StorageFigures };
  heartbeats: {
    groupCommit: LoadScenario;
    oneStatementPerRequest: LoadScenario;
    gatewayBatch: LoadScenario;
  };
  batchRead: LoadScenario;
  sweep: {
    expiredRows: number;
    deleted: number;
    durationMs: number;
    maxBatchMs: number;
    deletedRowsPerSecond: number;
    tableRowsPerSecond: number;
    dbCpuUsPerDeletedRow: number;
  };
  hotUpdateShare: number | null;
}

export interface StorageFigures {
  heapBytes: number;
  indexBytes: number;
  totalBytes: number;
  bytesPerRow: { heap: number; index: number; total: number };
}

export interface ScaleResults {
  schema: 1;
  command: string;
  measuredAt: string;
  durationSeconds: number;
  machine: {
    label: string;
    hostname: string;
    cpus: number;
    cpuModel: string;
    memoryGb: number;
    node: string;
    postgres: string;
    postgresSettings: Record<string, string>;
    databaseCpuMethod: string;
  };
  secondsPerScenario: number;
  bareHandler: Pick<
    LoadScenario,
    'connections' | 'requestsPerSecond' | 'p50Ms' | 'p99Ms' | 'apiCpuUsPerRequest' | 'apiCoresBusy'
  >;
  sizes: SizeResult[];
  optionB: OptionBResult | { skipped: string };
  /** What open live streams (GET /status/stream) cost while nothing changes. */
  stream: StreamCost | { skipped: string };
  /**
   * What the change log costs a group-commit flush: the upsert before the log and today's, in
   * alternating rounds on the first size's table (bench/change-log-price.ts). Optional: results
   * written before it existed lack it.
   */
  changeLogPrice?: LogPrice | { skipped: string };
}

export interface StreamCost {
  streams: number;
  watchedIdsPerStream: number;
  /** Distinct users the streams watch between them. */
  watchedUsers: number;
  openSeconds: number;
  /** API RSS before any stream and with all of them open. */
  apiRssMbBefore: number;
  apiRssMbOpen: number;
  /** API memory per open stream: RSS and V8 heap in use with all open, minus before, over streams. */
  apiRssKbPerStream: number;
  apiHeapKbPerStream: number;
  /** CPU per open stream and second while no watched user changes (keep-alives, held presence, change detection). */
  apiCpuUsPerStreamSecond: number;
  dbCpuUsPerStreamSecond: number;
}

const round = (n: number, digits = 2) => Math.round(n * 10 ** digits) / 10 ** digits;
const t0 = performance.now();
const log = (message: string) =>
  console.error(`[bench:scale] ${((performance.now() - t0) / 1000).toFixed(1)}s ${message}`);

function parseCount(raw: string): number {
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 1000) throw new Error(`not a row count: ${raw}`);
  return value;
}

/** Fresh ids only: expired rows must stay expired until the sweep. */
function freshId(rows: number): number {
  for (;;) {
    const id = 1 + Math.floor(Math.random() * rows);
    if (id % EXPIRED_EVERY !== 0) return id;
  }
}

/** Grows `pulse` to `rows` rows; rows removed by an earlier sweep come back expired. */
async function fill(db: BenchDatabase, rows: number): Promise<void> {
  const chunk = 500_000;
  for (let from = 1; from <= rows; from += chunk) {
    const to = Math.min(rows, from + chunk - 1);
    await db.query(
      `INSERT INTO pulse (user_id, last_hb)
       SELECT g, CASE WHEN g % $3 = 0 THEN now() - make_interval(secs => $4) ELSE now() END
         FROM generate_series($1::bigint, $2::bigint) g
       ON CONFLICT (user_id) DO NOTHING`,
      [from, to, EXPIRED_EVERY, EXPIRED_AGE_SECONDS],
    );
  }
  await db.query('VACUUM ANALYZE pulse');
  // Flush the load's dirty pages now, not inside a measured window (needs superuser).
  await db.query('CHECKPOINT').catch(() => log('CHECKPOINT not allowed: skipped'));
}

async function storage(db: BenchDatabase): Promise<StorageFigures> {
  const { rows } = await db.query<{ heap: string; index: string; total: string; n: string }>(
    `SELECT pg_relation_size('pulse') AS heap, pg_indexes_size('pulse') AS index,
            pg_total_relation_size('pulse') AS total, (SELECT count(*) FROM pulse) AS n`,
  );
  const r = rows[0]!;
  const n = Number(r.n);
  return {
    heapBytes: Number(r.heap),
    indexBytes: Number(r.index),
    totalBytes: Number(r.total),
    bytesPerRow: {
      heap: round(Number(r.heap) / n, 1),
      index: round(Number(r.index) / n, 1),
      total: round(Number(r.total) / n, 1),
    },
  };
}

/** One kind of request; `body` is called for every request, so ids are random throughout. */
interface Workload {
  method: 'GET' | 'POST';
  path: string;
  body: () => string;
  idsPerRequest: number;
  connections: number;
}

interface LoadRun {
  completed: number;
  non2xx: number;
  errors: number;
  seconds: number;
  p50Ms: number;
  p99Ms: number;
}

/** autocannon on 127.0.0.1 for a bounded time (setup cost stays outside: no prebuilt lists). */
async function drive(url: string, work: Workload, seconds: number): Promise<LoadRun> {
  const result = await autocannon({
    url,
    connections: work.connections,
    duration: seconds,
    requests: [
      {
        method: work.method,
        path: work.path,
        headers: { 'content-type': 'application/json' },
        setupRequest: (request) => ({ ...request, body: work.body() }),
      },
    ],
  });
  return {
    completed: result.requests.total,
    non2xx: result.non2xx,
    errors: result.errors + result.timeouts,
    seconds: result.duration,
    p50Ms: result.latency.p50,
    p99Ms: result.latency.p99,
  };
}

async function measureLoad(
  db: BenchDatabase | undefined,
  api: ApiProcess,
  work: Workload,
  seconds: number,
): Promise<LoadScenario> {
  // Warm-up: the pool's connections open and the JIT settles outside the measured window.
  await drive(api.url, work, 1);
  const backends = db ? watchBackends(db, 'pulse-api') : undefined;
  await backends?.start();
  const apiCpuBefore = processCpuSeconds(api.pid) ?? 0;
  const load = await drive(api.url, work, seconds);
  const apiCpu = (processCpuSeconds(api.pid) ?? 0) - apiCpuBefore;
  const dbCpu = backends
    ? await backends.stop()
    : { backendsSeconds: 0, autovacuumSeconds: 0, local: true, processes: 0 };
  if (!dbCpu.local) throw new Error('database CPU needs the PostgreSQL server on this machine');
  const ok = Math.max(1, load.completed - load.non2xx);
  const ids = ok * work.idsPerRequest;
  const dbSeconds = dbCpu.backendsSeconds + dbCpu.autovacuumSeconds;
  return {
    connections: work.connections,
    idsPerRequest: work.idsPerRequest,
    requestsPerSecond: Math.round(ok / load.seconds),
    idsPerSecond: Math.round(ids / load.seconds),
    p50Ms: load.p50Ms,
    p99Ms: load.p99Ms,
    failed: load.errors + load.non2xx,
    dbCpuUsPerId: round((dbSeconds * 1e6) / ids),
    dbCpuUsPerIdBackendsOnly: round((dbCpu.backendsSeconds * 1e6) / ids),
    dbCpuUsPerRequest: round((dbSeconds * 1e6) / ok),
    apiCpuUsPerId: round((apiCpu * 1e6) / ids),
    apiCpuUsPerRequest: round((apiCpu * 1e6) / ok),
    apiCoresBusy: round(apiCpu / load.seconds),
  };
}

async function withApi<T>(
  db: BenchDatabase,
  env: Record<string, string>,
  run: (api: ApiProcess) => Promise<T>,
): Promise<T> {
  const api = await startApi(db.url, { BATCH_MAX_IDS: String(ID_LIST), ...env });
  stopOnTimeout.api = api;
  try {
    return await run(api);
  } finally {
    stopOnTimeout.api = undefined;
    await api.stop();
  }
}

async function measureSweep(db: BenchDatabase, rows: number): Promise<SizeResult['sweep']> {
  const logger = createLogger('pulse-bench', 'silent');
  const applicationName = 'pulse-bench-sweeper';
  const sweeperDb = openDatabase({ connectionString: db.url, poolMax: 2, applicationName, logger });
  try {
    await Promise.all([1, 2].map(() => sweeperDb.pool.query('SELECT 1')));
    const { rows: expired } = await db.query<{ n: string }>(
      `SELECT count(*) AS n FROM pulse WHERE last_hb < now() - make_interval(secs => $1)`,
      [SWEEP_OLDER_THAN_SECONDS],
    );
    const backends = watchBackends(db, applicationName);
    await backends.start();
    const report = await new Sweeper(sweeperDb.db, logger, {
      schedule: '* * * * *',
      olderThanSeconds: SWEEP_OLDER_THAN_SECONDS,
      batchSize: 10_000,
      leaseTtlSeconds: 60,
    }).sweepOnce();
    const cpu = await backends.stop();
    if (report.outcome !== 'done') throw new Error(`sweep ended ${report.outcome}`);
    const seconds = report.durationMs / 1000;
    return {
      expiredRows: Number(expired[0]?.n),
      deleted: report.deleted,
      durationMs: report.durationMs,
      maxBatchMs: report.maxBatchMs,
      deletedRowsPerSecond: Math.round(report.deleted / seconds),
      tableRowsPerSecond: Math.round(rows / seconds),
      dbCpuUsPerDeletedRow: round(
        ((cpu.backendsSeconds + cpu.autovacuumSeconds) * 1e6) / Math.max(1, report.deleted),
      ),
    };
  } finally {
    await sweeperDb.close();
  }
}

async function measureSize(db: BenchDatabase, rows: number, seconds: number): Promise<SizeResult> {
  log(`${rows} rows: filling`);
  await fill(db, rows);
  const atRest = await storage(db);
  const idList = () =>
    JSON.stringify(Array.from({ length: ID_LIST }, () => ({ user_id: freshId(rows) })));
  const single: Workload = {
    method: 'POST',
    path: '/status/update',
    body: () => `{"user_id":${freshId(rows)}}`,
    idsPerRequest: 1,
    connections: 32,
  };
  log(`${rows} rows: single heartbeats, group commit`);
  const groupCommit = await withApi(db, {}, (api) => measureLoad(db, api, single, seconds));
  log(`${rows} rows: single heartbeats, one statement per request`);
  const oneStatementPerRequest = await withApi(db, { HEARTBEAT_GROUP_COMMIT: 'false' }, (api) =>
    measureLoad(db, api, single, seconds),
  );
  log(`${rows} rows: gateway batches of ${ID_LIST}`);
  const gateway: Workload = { ...single, body: idList, idsPerRequest: ID_LIST, connections: 8 };
  const gatewayBatch = await withApi(db, {}, (api) => measureLoad(db, api, gateway, seconds));
  log(`${rows} rows: /status/batch of ${ID_LIST} ids`);
  const reads: Workload = { ...gateway, path: '/status/batch', connections: 2 };
  const batchRead = await withApi(db, {}, (api) => measureLoad(db, api, reads, seconds));
  const afterLoad = await storage(db);
  const { rows: hot } = await db.query<{ upd: string; hot: string }>(
    `SELECT n_tup_upd AS upd, n_tup_hot_upd AS hot FROM pg_stat_user_tables WHERE relname = 'pulse'`,
  );
  const updates = Number(hot[0]?.upd ?? 0);
  log(`${rows} rows: sweeping the expired rows`);
  const sweep = await measureSweep(db, rows);
  return {
    rows,
    storage: { atRest, afterLoad },
    heartbeats: { groupCommit, oneStatementPerRequest, gatewayBatch },
    batchRead,
    sweep,
    hotUpdateShare: updates === 0 ? null : round(Number(hot[0]?.hot) / updates, 3),
  };
}

/**
 * What the run costs in seconds, from rates seen on this 2-core machine while shared: filling
 * ~50,000 rows/s, sweeping ~100,000 table rows/s, loading Redis ~30,000 keys/s.
 */
const STREAM_HOLDER_BASE = 1_000_000_000;

async function apiHeapMb(api: ApiProcess): Promise<number> {
  const text = await (await fetch(`${api.url}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith('nodejs_heap_size_used_bytes '));
  return Number(line?.split(' ')[1] ?? NaN) / 2 ** 20;
}

/**
 * Opens `streams` streams, each holding its own user's presence and watching `watch` of
 * `watchedUsers` users, then measures memory per stream and, over `seconds` in which no watched
 * user changes, API and database CPU per open stream and second.
 */
async function measureStreams(
  db: BenchDatabase,
  streams: number,
  seconds: number,
): Promise<StreamCost> {
  const watch = 100;
  const watchedUsers = 20_000;
  return withApi(
    db,
    { STREAM_MAX_OPEN: String(streams + 10), HTTP_MAX_CONNECTIONS: String(streams + 1000) },
    async (api) => {
      const rssBefore = api.rssMb();
      const heapBefore = await apiHeapMb(api);
      const agent = new http.Agent({ keepAlive: false, maxSockets: Infinity });
      const open: http.ClientRequest[] = [];
      try {
        const openOne = (i: number) =>
          new Promise<void>((resolve, reject) => {
            const ids = Array.from(
              { length: watch },
              () => 1 + Math.floor(Math.random() * watchedUsers),
            );
            const req = http.get(
              `${api.url}/status/stream?hold=true&user_id=${STREAM_HOLDER_BASE + i}&watch=${ids.join(',')}`,
              { agent },
              (res) => {
                if (res.statusCode !== 200) reject(new Error(`stream refused: ${res.statusCode}`));
                res.on('data', () => undefined);
                resolve();
              },
            );
            req.on('error', reject);
            open.push(req);
          });
        const openRange = async (from: number, to: number) => {
          for (let i = from; i < to; i += 20) {
            await Promise.all(
              Array.from({ length: Math.min(20, to - i) }, (_, k) => openOne(i + k)),
            );
          }
          // Long enough for V8's memory reducer to collect what opening them left behind.
          await new Promise((resolve) => setTimeout(resolve, 12_000));
        };
        await openRange(0, streams);
        const rssAfter = api.rssMb();
        const heapAfter = await apiHeapMb(api);
        const backends = watchBackends(db, 'pulse-api');
        await backends.start();
        const apiCpuBefore = processCpuSeconds(api.pid) ?? 0;
        const windowStarted = performance.now();
        await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
        const openSeconds = (performance.now() - windowStarted) / 1000;
        const apiCpu = (processCpuSeconds(api.pid) ?? 0) - apiCpuBefore;
        const dbCpu = await backends.stop();
        const streamSeconds = streams * openSeconds;
        return {
          streams,
          watchedIdsPerStream: watch,
          watchedUsers,
          openSeconds: round(openSeconds, 1),
          apiRssMbBefore: round(rssBefore, 1),
          apiRssMbOpen: round(rssAfter, 1),
          apiRssKbPerStream: round(((rssAfter - rssBefore) * 1024) / streams, 1),
          apiHeapKbPerStream: round(((heapAfter - heapBefore) * 1024) / streams, 1),
          apiCpuUsPerStreamSecond: round((apiCpu * 1e6) / streamSeconds),
          dbCpuUsPerStreamSecond: round(
            ((dbCpu.backendsSeconds + dbCpu.autovacuumSeconds) * 1e6) / streamSeconds,
          ),
        };
      } finally {
        for (const req of open) req.destroy();
        agent.destroy();
      }
    },
  );
}

function estimateSeconds(
  sizes: number[],
  seconds: number,
  redisKeys: number,
  logPriceRounds: number,
): number {
  const perScenario = seconds + 1 + 5; // warm-up and API start/stop
  const largest = sizes.at(-1) ?? 0;
  const fillAndSweep = largest / 50_000 + sizes.reduce((a, n) => a + n / 100_000, 0);
  const redis = redisKeys > 0 ? redisKeys / 30_000 + 3 * seconds + 45 : 0;
  const streams = 3 * seconds + 45;
  const logPrice = 2 * logPriceRounds * seconds + (sizes[0] ?? 0) / 50_000;
  return Math.round(
    fillAndSweep + sizes.length * 4 * perScenario + perScenario + redis + streams + logPrice + 10,
  );
}

const stopOnTimeout: { api: ApiProcess | undefined; db: BenchDatabase | undefined } = {
  api: undefined,
  db: undefined,
};

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      rows: { type: 'string', default: '1e6,1e7' },
      seconds: { type: 'string', default: '5' },
      'redis-keys': { type: 'string', default: '1e6' },
      streams: { type: 'string', default: '2000' },
      'log-price-rounds': { type: 'string', default: '5' },
      out: { type: 'string', default: path.join(root, 'bench/results/scale.json') },
    },
  });
  const sizes = values.rows.split(',').map(parseCount);
  if (sizes.some((n, i) => i > 0 && n <= sizes[i - 1]!)) throw new Error('--rows must ascend');
  const seconds = Number(values.seconds);
  if (!(seconds >= 1 && seconds <= 60)) throw new Error('--seconds must be between 1 and 60');
  const redisKeys = Number(values['redis-keys']);
  const streamCount = Number(values.streams);
  if (!(Number.isInteger(streamCount) && streamCount >= 0 && streamCount <= 10_000)) {
    throw new Error('--streams must be an integer from 0 to 10,000');
  }
  const logPriceRounds = Number(values['log-price-rounds']);
  if (!(Number.isInteger(logPriceRounds) && logPriceRounds >= 0 && logPriceRounds <= 50)) {
    throw new Error('--log-price-rounds must be an integer from 0 to 50');
  }
  const loadAtStart = loadavg()[0] ?? 0;
  const estimate = estimateSeconds(sizes, seconds, redisKeys, logPriceRounds);
  log(
    `sizes ${sizes.join(', ')} rows, ${seconds} s per scenario, Option B with ${redisKeys} keys: ` +
      `about ${Math.ceil(estimate / 60)} minutes on a 2-core machine; it stops itself after ${Math.ceil((2 * estimate) / 60)}`,
  );
  const started = performance.now();
  const watchdog = setTimeout(
    () => {
      log(`over twice the estimate (${2 * estimate} s): stopping and cleaning up`);
      void Promise.allSettled([stopOnTimeout.api?.stop(), stopOnTimeout.db?.close()]).finally(() =>
        process.exit(2),
      );
    },
    2 * estimate * 1000,
  );
  watchdog.unref();

  const bareApi = await startApi('postgres://unused@127.0.0.1/unused', {}, [
    '--import',
    'tsx',
    path.join(root, 'bench/bare-handler.ts'),
  ]);
  let bare: LoadScenario;
  try {
    log('bare Express handler (no database), the floor for the API CPU per request');
    bare = await measureLoad(
      undefined,
      bareApi,
      {
        method: 'POST',
        path: '/status/update',
        body: () => `{"user_id":${1 + Math.floor(Math.random() * 1e6)}}`,
        idsPerRequest: 1,
        connections: 32,
      },
      seconds,
    );
  } finally {
    await bareApi.stop();
  }

  const db = await openBenchDatabase(`pulse_bench_scale_${process.pid}`);
  stopOnTimeout.db = db;
  const results: SizeResult[] = [];
  let stream: ScaleResults['stream'] = { skipped: '--streams 0' };
  let changeLogPrice: ScaleResults['changeLogPrice'] = { skipped: '--log-price-rounds 0' };
  let server: { version: string; settings: Record<string, string> };
  try {
    const { rows: settings } = await db.query<{
      name: string;
      setting: string;
      unit: string | null;
    }>(
      `SELECT name, setting, unit FROM pg_settings
        WHERE name IN ('shared_buffers', 'synchronous_commit', 'fsync', 'wal_level', 'max_connections')`,
    );
    const { rows: version } = await db.query<{ v: string }>(
      `SELECT current_setting('server_version') AS v`,
    );
    server = {
      version: version[0]?.v ?? 'unknown',
      settings: Object.fromEntries(
        settings.map((s) => [s.name, `${s.setting}${s.unit ? ` (${s.unit})` : ''}`]),
      ),
    };
    for (const rows of sizes) {
      results.push(await measureSize(db, rows, seconds));
      if (rows !== sizes[0] || logPriceRounds === 0) continue;
      log(`${rows} rows: the change log's price, ${logPriceRounds} rounds before and after`);
      changeLogPrice = await measureLogPrice(db, {
        randomUserId: () => freshId(rows),
        batch: 50,
        roundSeconds: seconds,
        rounds: logPriceRounds,
        comingOnline: 0.01,
      });
    }
    if (streamCount > 0) {
      log(`${streamCount} open streams, each watching 100 of 20,000 users`);
      stream = await measureStreams(db, streamCount, 3 * seconds);
    }
  } finally {
    stopOnTimeout.db = undefined;
    await db.close();
  }

  let optionB: ScaleResults['optionB'] = { skipped: '--redis-keys 0' };
  if (redisKeys > 0) {
    try {
      optionB = await measureOptionB({
        url: process.env.REDIS_URL ?? 'redis://127.0.0.1:6379',
        keys: redisKeys,
        seconds,
        log,
      });
    } catch (error) {
      optionB = { skipped: `Redis failed: ${(error as Error).message}` };
      log(optionB.skipped);
    }
  }

  const cpuModel = cpus()[0]?.model ?? 'unknown CPU';
  const memoryGb = Math.round(totalmem() / 2 ** 30);
  const output: ScaleResults = {
    schema: 1,
    command: `npm run bench:scale -- --rows ${values.rows} --seconds ${seconds} --redis-keys ${values['redis-keys']} --streams ${values.streams} --log-price-rounds ${logPriceRounds}`,
    measuredAt: new Date().toISOString(),
    durationSeconds: Math.round((performance.now() - started) / 1000),
    machine: {
      label: `${cpus().length} x ${cpuModel}, ${memoryGb} GB, PostgreSQL ${server.version} (${process.env.DATABASE_URL ? 'the machine\u2019s server' : 'embedded'}), ${loadAtStart > 2 ? 'shared with other work' : 'quiet'} (load average ${loadAtStart.toFixed(1)} at the start)`,
      hostname: hostname(),
      cpus: cpus().length,
      cpuModel,
      memoryGb,
      node: process.version,
      postgres: server.version,
      postgresSettings: server.settings,
      databaseCpuMethod:
        'utime+stime from /proc of the backends serving the measured process, plus autovacuum workers in the database',
    },
    secondsPerScenario: seconds,
    bareHandler: {
      connections: bare.connections,
      requestsPerSecond: bare.requestsPerSecond,
      p50Ms: bare.p50Ms,
      p99Ms: bare.p99Ms,
      apiCpuUsPerRequest: bare.apiCpuUsPerRequest,
      apiCoresBusy: bare.apiCoresBusy,
    },
    sizes: results,
    optionB,
    stream,
    changeLogPrice,
  };
  mkdirSync(path.dirname(values.out), { recursive: true });
  writeFileSync(values.out, `${JSON.stringify(output, null, 2)}\n`);
  log(`wrote ${values.out} in ${output.durationSeconds} s (estimated ${estimate} s)`);
}

await main();

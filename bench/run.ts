/**
 * npm run bench: the write and read paths under load, in one run on this machine.
 *
 *   BENCH_ROWS=1000000 BENCH_DURATION_SECONDS=10 BENCH_CONNECTIONS=64 npm run bench
 *
 * Uses DATABASE_URL's server (in a database it creates, pulse_bench) or an embedded PostgreSQL.
 * The API runs as a child process, autocannon drives it on 127.0.0.1, every run stops by itself.
 */
import os from 'node:os';
import {
  fillTable,
  openBenchDatabase,
  randomUserId,
  runLoad,
  startApi,
  type BenchDatabase,
  type LoadResult,
} from './support.ts';

const rows = Number(process.env.BENCH_ROWS ?? 1_000_000);
const durationSeconds = Number(process.env.BENCH_DURATION_SECONDS ?? 10);
const connections = Number(process.env.BENCH_CONNECTIONS ?? 64);
const gatewayBatch = 1000;

const heartbeat = () => ({ path: '/status/update', body: JSON.stringify({ user_id: randomUserId(rows) }) });

const gatewayHeartbeats = () => ({
  path: '/status/update',
  body: JSON.stringify(Array.from({ length: gatewayBatch }, () => ({ user_id: randomUserId(rows) }))),
});

const batchStatus = () => ({
  path: '/status/batch',
  body: JSON.stringify(Array.from({ length: 1000 }, () => ({ user_id: randomUserId(rows) }))),
});

const singleStatus = () => ({ path: `/status/${randomUserId(rows)}` });

async function withApi<T>(
  db: BenchDatabase,
  env: Record<string, string>,
  run: (api: Awaited<ReturnType<typeof startApi>>) => Promise<T>,
): Promise<T> {
  const api = await startApi(db.url, { BATCH_MAX_IDS: String(gatewayBatch), ...env });
  try {
    return await run(api);
  } finally {
    await api.stop();
  }
}

async function hotUpdateShare(db: BenchDatabase): Promise<string> {
  const { rows: stats } = await db.query<{ upd: string; hot: string }>(
    `SELECT n_tup_upd AS upd, n_tup_hot_upd AS hot FROM pg_stat_user_tables WHERE relname = 'pulse'`,
  );
  const { upd, hot } = stats[0] ?? { upd: '0', hot: '0' };
  return Number(upd) === 0 ? 'n/a' : `${((100 * Number(hot)) / Number(upd)).toFixed(1)}%`;
}

const fmt = (n: number, digits = 0) => n.toLocaleString('en-US', { maximumFractionDigits: digits });

function row(name: string, r: LoadResult, idsPerRequest: number, target: string): string {
  const perSecond = r.requestsPerSecond * idsPerRequest;
  const failures = r.errors + r.non2xx;
  return `| ${name} | ${fmt(r.requestsPerSecond)} | ${fmt(perSecond)} | ${r.p50} | ${r.p99} | ${fmt(r.peakRssMb)} | ${failures} | ${target} |`;
}

async function main(): Promise<void> {
  console.error(`bench: ${rows} rows, ${durationSeconds}s per scenario, ${connections} connections`);
  const db = await openBenchDatabase('pulse_bench');
  try {
    console.error('bench: filling the table');
    await fillTable(db, rows);
    const load = (api: Awaited<ReturnType<typeof startApi>>, request: () => { path: string; body?: string }, method: 'GET' | 'POST' = 'POST') =>
      runLoad({ url: api.url, method, request, connections, durationSeconds, api });

    console.error('bench: single heartbeats, group commit');
    const grouped = await withApi(db, {}, (api) => load(api, heartbeat));
    console.error('bench: single heartbeats, one statement per request');
    const direct = await withApi(db, { HEARTBEAT_GROUP_COMMIT: 'false' }, (api) => load(api, heartbeat));
    console.error('bench: gateway batches');
    const gateway = await withApi(db, {}, (api) => load(api, gatewayHeartbeats));
    const hot = await hotUpdateShare(db);
    console.error('bench: reads');
    const [batch, single] = await withApi(db, {}, async (api) => [
      await load(api, batchStatus),
      await load(api, singleStatus, 'GET'),
    ]);

    const ratio = grouped.requestsPerSecond / direct.requestsPerSecond;
    console.log(`
Pulse benchmark: ${rows.toLocaleString('en-US')} rows, ${durationSeconds}s per scenario, ${connections} connections, ${os.cpus().length} cores, Node ${process.version}
PostgreSQL: ${process.env.DATABASE_URL ? 'DATABASE_URL' : 'embedded'}

| scenario | requests/s | heartbeats or ids/s | p50 ms | p99 ms | API RSS MB | failed | target |
|---|---|---|---|---|---|---|---|
${row('POST /status/update, group commit', grouped, 1, 'p99 < 50 ms')}
${row('POST /status/update, one statement per request', direct, 1, '')}
${row(`POST /status/update, gateway batch of ${gatewayBatch}`, gateway, gatewayBatch, '>= 150,000 heartbeats/s')}
${row('POST /status/batch, 1,000 ids', batch, 1000, 'p99 < 25 ms')}
${row('GET /status/{id}', single, 1, '')}

group commit / one statement per request: ${ratio.toFixed(2)}x (target >= 4x)
HOT updates on pulse: ${hot}
`);
  } finally {
    await db.close();
  }
}

await main();

/**
 * npm run bench: the write and read paths under load, in one run on this machine.
 *
 *   BENCH_ROWS=1000000 BENCH_DURATION_SECONDS=10 npm run bench
 *
 * Uses DATABASE_URL's server (in a database it creates, pulse_bench) or an embedded PostgreSQL.
 * The compiled API runs as a child process, autocannon drives it on 127.0.0.1, and every run
 * stops by itself.
 */
import os from 'node:os';
import {
  fillTable,
  openBenchDatabase,
  prepare,
  randomUserId,
  runLoad,
  startApi,
  startBareExpress,
  type ApiProcess,
  type BenchDatabase,
  type BenchRequest,
  type LoadResult,
} from './support.ts';
import { overloadScenarios, overloadTable, runOverloadScenarios } from './overload.ts';

const rows = Number(process.env.BENCH_ROWS ?? 1_000_000);
const durationSeconds = Number(process.env.BENCH_DURATION_SECONDS ?? 10);
const singleConnections = Number(process.env.BENCH_CONNECTIONS ?? 32);
const ID_LIST = 1000;

const ids = (count: number) =>
  JSON.stringify(Array.from({ length: count }, () => ({ user_id: randomUserId(rows) })));
const heartbeat = (): BenchRequest => ({
  method: 'POST',
  path: '/status/update',
  body: JSON.stringify({ user_id: randomUserId(rows) }),
});
const gatewayHeartbeats = (): BenchRequest => ({
  method: 'POST',
  path: '/status/update',
  body: ids(ID_LIST),
});
const batchStatus = (): BenchRequest => ({
  method: 'POST',
  path: '/status/batch',
  body: ids(ID_LIST),
});
const singleStatus = (): BenchRequest => ({ method: 'GET', path: `/status/${randomUserId(rows)}` });

async function withApi<T>(
  db: BenchDatabase,
  env: Record<string, string>,
  run: (api: ApiProcess) => Promise<T>,
) {
  const api = await startApi(db.url, { BATCH_MAX_IDS: String(ID_LIST), ...env });
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

const fmt = (n: number) => n.toLocaleString('en-US', { maximumFractionDigits: 0 });

function row(
  name: string,
  connections: number,
  r: LoadResult,
  idsPerRequest: number,
  target: string,
): string {
  const failures = r.errors + r.non2xx;
  return `| ${name} | ${connections} | ${fmt(r.requestsPerSecond)} | ${fmt(r.requestsPerSecond * idsPerRequest)} | ${r.p50} | ${r.p99} | ${fmt(r.cpuUsPerRequest)} | ${fmt(r.peakRssMb)} | ${failures} | ${target} |`;
}

async function main(): Promise<void> {
  console.error(`bench: ${rows} rows, ${durationSeconds}s per scenario`);
  const db = await openBenchDatabase('pulse_bench');
  try {
    console.error('bench: filling the table');
    await fillTable(db, rows);
    const load = (api: ApiProcess, requests: BenchRequest[], connections: number) =>
      runLoad({ url: api.url, requests, connections, durationSeconds, api });

    const singles = prepare(5000, heartbeat);
    console.error('bench: single heartbeats, group commit');
    const grouped = await withApi(db, {}, (api) => load(api, singles, singleConnections));
    console.error('bench: the same single heartbeats to a bare Express handler (CPU yardstick)');
    const bareApi = await startBareExpress();
    const bare = await load(bareApi, singles, singleConnections).finally(() => bareApi.stop());
    const barePulseApi = await startBareExpress('pulse');
    const barePulse = await load(barePulseApi, singles, singleConnections).finally(() =>
      barePulseApi.stop(),
    );
    console.error('bench: single heartbeats, one statement per request');
    const direct = await withApi(db, { HEARTBEAT_GROUP_COMMIT: 'false' }, (api) =>
      load(api, singles, singleConnections),
    );
    console.error('bench: gateway batches');
    const gateway = await withApi(db, {}, (api) => load(api, prepare(200, gatewayHeartbeats), 8));
    const hot = await hotUpdateShare(db);
    console.error('bench: reads');
    const lookups = prepare(5000, singleStatus);
    const [batch, single] = await withApi(db, {}, async (api) => [
      await load(api, prepare(200, batchStatus), 2),
      await load(api, lookups, singleConnections),
    ]);
    const singleDirect = await withApi(db, { STATUS_READ_COALESCING: 'false' }, (api) =>
      load(api, lookups, singleConnections),
    );

    const overload = await runOverloadScenarios(db, overloadScenarios(rows), durationSeconds);

    const ratio = grouped.requestsPerSecond / direct.requestsPerSecond;
    const cpu = os.cpus()[0]?.model ?? 'unknown CPU';
    console.log(`
Pulse benchmark: ${fmt(rows)} rows in pulse, ${durationSeconds} s per scenario, ${os.cpus().length} x ${cpu}, Node ${process.version}
PostgreSQL: ${process.env.DATABASE_URL ? 'DATABASE_URL' : 'embedded'}; API, PostgreSQL and autocannon share the machine

| scenario | connections | requests/s | heartbeats or ids/s | p50 ms | p99 ms | API CPU us/request | API RSS MB | failed | target |
|---|---|---|---|---|---|---|---|---|---|
${row('POST /status/update, group commit', singleConnections, grouped, 1, 'p99 < 50 ms')}
${row('bare Express 5 handler: parse JSON, answer (no database)', singleConnections, bare, 1, 'CPU yardstick')}
${row("the same bare handler on Pulse's HTTP server", singleConnections, barePulse, 1, 'like-for-like yardstick')}
${row('POST /status/update, one statement per request', singleConnections, direct, 1, '')}
${row(`POST /status/update, gateway batch of ${ID_LIST}`, 8, gateway, ID_LIST, '>= 150,000 heartbeats/s')}
${row(`POST /status/batch, ${fmt(ID_LIST)} ids`, 2, batch, ID_LIST, 'p99 < 25 ms')}
${row('GET /status/{id}, coalesced lookups', singleConnections, single, 1, '')}
${row('GET /status/{id}, one query per lookup', singleConnections, singleDirect, 1, '')}

API CPU per request (process CPU time / requests), single heartbeats: Pulse ${fmt(grouped.cpuUsPerRequest)} us, bare Express handler ${fmt(bare.cpuUsPerRequest)} us: ${(grouped.cpuUsPerRequest / bare.cpuUsPerRequest).toFixed(2)}x (target <= 1.25x); the same handler on Pulse's HTTP server ${fmt(barePulse.cpuUsPerRequest)} us: ${(grouped.cpuUsPerRequest / barePulse.cpuUsPerRequest).toFixed(2)}x
group commit / one statement per request: ${ratio.toFixed(2)}x (target >= 4x)
coalesced / one query per lookup: ${(single.requestsPerSecond / singleDirect.requestsPerSecond).toFixed(2)}x
HOT updates on pulse: ${hot}

Overload (docs/overload.md): clients that ignore Retry-After; latency of accepted answers only

${overloadTable(overload)}
`);
  } finally {
    await db.close();
  }
}

await main();

/**
 * npm run bench:stream: what finding and delivering presence changes costs the database, with the
 * change log, at the issue's sizes, for 2 and then 4 API processes in one run.
 *
 *   flock /tmp/pulse-bench.lock npm run bench:stream
 *   BENCH_APIS=2,4 BENCH_STREAMS=4000 BENCH_WATCH=100 BENCH_USERS=1000000 BENCH_ONLINE=100000
 *   BENCH_CHANGES=300 BENCH_ROUNDS=6
 *
 * `pulse` holds BENCH_USERS users, BENCH_ONLINE of them online and kept fresh by the driver (a
 * heartbeat every 5 s, as their clients would). For each entry of BENCH_APIS, that many compiled
 * API processes share BENCH_STREAMS streams (each watching BENCH_WATCH ids drawn from the online
 * users and from those about to come online). Every 10 s, BENCH_CHANGES watched users change: a
 * third come online (the heartbeat upsert), a third go offline explicitly (POST /status/offline's
 * statement), a third stop beating and go offline by the threshold (logged by the offline
 * detector one of the APIs holds). The driver's statements run on its own connections.
 *
 * Measured per phase: the CPU of the database backends serving the API processes (reading the
 * change log, the offline detector, anything else they run; not the driver's writes), per second
 * of measuring, from /proc (the database must run on this machine); delivery latency (commit, or
 * threshold crossing, to the event at the client); events delivered, unexpected, twice.
 */
import http from 'node:http';
import os from 'node:os';
import { readFileSync, writeFileSync } from 'node:fs';
import { sql } from 'kysely';
import { openDatabase } from '../lib/infra/db.ts';
import { createLogger } from '../lib/infra/logger.ts';
import { recordHeartbeats, setOffline } from '../lib/store/pulse-store.ts';
import {
  fillTable,
  openBenchDatabase,
  requireOpenFiles,
  sample,
  sleep,
  startApi,
  type ApiProcess,
} from './support.ts';

const apiCounts = (process.env.BENCH_APIS ?? '2,4').split(',').map(Number);
const streamCount = Number(process.env.BENCH_STREAMS ?? 4_000);
const watchCount = Number(process.env.BENCH_WATCH ?? 100);
const users = Number(process.env.BENCH_USERS ?? 1_000_000);
const onlineCount = Number(process.env.BENCH_ONLINE ?? 100_000);
const changesPerRound = Number(process.env.BENCH_CHANGES ?? 300);
const rounds = Number(process.env.BENCH_ROUNDS ?? 6);
const roundMs = 10_000;
const thresholdSeconds = 20;
const resultsFile = process.env.BENCH_RESULTS ?? new URL('./results/stream.json', import.meta.url);

const fmt = (n: number, digits = 0) =>
  n.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits });

function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

/** CPU seconds (user + system) of a process, or undefined once it is gone. */
function cpuOf(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return undefined;
  }
}

type Kind = 'online' | 'offline' | 'threshold';
interface Transition {
  online: boolean;
  kind: Kind;
  at: number;
}

/** The driver's refresh of the online users in flight (the clients' heartbeats). */
interface Refreshing {
  current: Promise<void>;
}

interface PhaseResult {
  apis: number;
  streams: number;
  measuredSeconds: number;
  dbCores: number;
  apiCores: number;
  apiRssMb: number;
  logReadsPerSecond: number;
  detectorStatementsPerSecond: number;
  detectorCheckedPerSecond: number;
  p99Ms: Record<Kind, number>;
  p50Ms: Record<Kind, number>;
  delivered: number;
  expected: number;
  unexpected: number;
  twice: number;
}

async function main(): Promise<void> {
  requireOpenFiles(streamCount + 1_000);
  const bench = await openBenchDatabase('pulse_bench_stream');
  const driver = openDatabase({
    connectionString: bench.url,
    poolMax: 4,
    applicationName: 'pulse-bench-driver',
    logger: createLogger('pulse-bench', 'warn'),
  });
  const results: PhaseResult[] = [];
  let refresher: NodeJS.Timeout | undefined;
  try {
    console.error(`bench:stream: ${fmt(users)} users, ${fmt(onlineCount)} online`);
    await fillTable(bench, users, 3_600);
    const online = new Set(
      sample(
        Array.from({ length: users }, (_, i) => i + 1),
        onlineCount,
      ),
    );
    const ids = [...online];
    for (let i = 0; i < ids.length; i += 10_000) {
      await recordHeartbeats(driver.db, ids.slice(i, i + 10_000));
    }
    const leaving = new Set<number>();
    const refreshing: Refreshing = { current: Promise.resolve() };
    // The online users' clients: a heartbeat every 5 s (a plain UPDATE: they are marked already).
    refresher = setInterval(() => {
      const fresh = [...online].filter((id) => !leaving.has(id));
      refreshing.current = bench
        .query(`UPDATE pulse SET last_hb = now() WHERE user_id = ANY($1::bigint[])`, [fresh])
        .then(() => undefined);
    }, 5_000);

    for (const apiCount of apiCounts) {
      const result = await phase(bench.url, apiCount, online, leaving, refreshing, driver.db);
      console.error(`bench:stream: ${JSON.stringify(result)}`);
      results.push(result);
    }
  } finally {
    clearInterval(refresher);
    await driver.close();
    await bench.close();
  }

  const [first, ...others] = results;
  console.log(`
Pulse stream benchmark (change log): ${fmt(streamCount)} streams x ${watchCount} watched ids, ${fmt(users)} users (${fmt(onlineCount)} online), ${fmt(changesPerRound)} changes every 10 s (a third each: online, explicit offline, offline by threshold), ${rounds} rounds per phase
${os.cpus().length} x ${os.cpus()[0]?.model ?? 'CPU'}, Node ${process.version}; PostgreSQL: ${process.env.DATABASE_URL ? 'DATABASE_URL' : 'embedded'}; APIs, PostgreSQL and the clients share the machine
ONLINE_THRESHOLD_SECONDS=${thresholdSeconds}, default STREAM_POLL_INTERVAL_MS and OFFLINE_DETECTOR_INTERVAL_MS

| measure | ${results.map((r) => `${r.apis} APIs`).join(' | ')} | target |
|---|${results.map(() => '---|').join('')}---|
| database CPU serving the APIs (log reads, detector) | ${results.map((r) => `${fmt(r.dbCores, 4)} cores`).join(' | ')} | <= 0.05; ${others.map((r) => `${r.apis}/${first!.apis} APIs: x${fmt(r.dbCores / first!.dbCores, 2)}`).join(', ')} (<= 1.3) |
| log reads/s; detector statements/s; users checked/s | ${results.map((r) => `${fmt(r.logReadsPerSecond, 1)}; ${fmt(r.detectorStatementsPerSecond, 1)}; ${fmt(r.detectorCheckedPerSecond)}`).join(' | ')} | |
| p99 online / explicit offline (from commit) | ${results.map((r) => `${fmt(r.p99Ms.online)} / ${fmt(r.p99Ms.offline)} ms`).join(' | ')} | <= 1,500 ms |
| p99 offline by threshold (from the crossing) | ${results.map((r) => `${fmt(r.p99Ms.threshold)} ms`).join(' | ')} | <= 1,500 ms |
| p50 online / offline / threshold | ${results.map((r) => `${fmt(r.p50Ms.online)} / ${fmt(r.p50Ms.offline)} / ${fmt(r.p50Ms.threshold)} ms`).join(' | ')} | |
| events delivered / expected (unexpected, twice) | ${results.map((r) => `${fmt(r.delivered)} / ${fmt(r.expected)} (${r.unexpected}, ${r.twice})`).join(' | ')} | all, 0, 0 |
| API CPU (all processes); RSS per process | ${results.map((r) => `${fmt(r.apiCores, 3)} cores; ${fmt(r.apiRssMb)} MB`).join(' | ')} | |
`);
  writeFileSync(
    resultsFile,
    `${JSON.stringify(
      {
        measuredAt: new Date().toISOString(),
        machine: `${os.cpus().length} x ${os.cpus()[0]?.model ?? 'CPU'}`,
        node: process.version,
        postgres: process.env.DATABASE_URL ? 'DATABASE_URL' : 'embedded',
        sizes: { streamCount, watchCount, users, onlineCount, changesPerRound, rounds },
        phases: results,
      },
      null,
      2,
    )}\n`,
  );
}

async function phase(
  url: string,
  apiCount: number,
  online: Set<number>,
  leaving: Set<number>,
  refreshing: Refreshing,
  db: Parameters<typeof recordHeartbeats>[0],
): Promise<PhaseResult> {
  console.error(`bench:stream: phase with ${apiCount} API processes`);
  const apis: ApiProcess[] = [];
  const agent = new http.Agent({ keepAlive: false, maxSockets: Infinity });
  const requests: http.ClientRequest[] = [];
  try {
    for (let i = 0; i < apiCount; i += 1) {
      apis.push(
        await startApi(url, {
          STREAM_MAX_OPEN: String(streamCount + 100),
          ONLINE_THRESHOLD_SECONDS: String(thresholdSeconds),
          PG_POOL_MAX: '10',
          // What this benchmark measures: streams fed by the change log.
          STREAM_CHANGE_SOURCE: 'log',
          STREAM_POLL_INTERVAL_MS: '500',
        }),
      );
    }
    // Watched ids: online users, and offline ones that may come online.
    const offlinePool = sample(
      Array.from({ length: users }, (_, i) => i + 1).filter((id) => !online.has(id)),
      onlineCount,
    );
    const watchable = [...online, ...offlinePool];
    const watchers = new Map<number, number>();
    const transitions = new Map<number, Transition>();
    const seen = new Map<string, number>();
    const latencies: Record<Kind, number[]> = { online: [], offline: [], threshold: [] };
    let measuring = false;
    let unexpected = 0;
    let twice = 0;
    let expected = 0;

    const onChange = (stream: number, userId: number, isOnline: boolean) => {
      if (!measuring) return;
      const t = transitions.get(userId);
      if (!t || t.online !== isOnline) {
        unexpected += 1;
        return;
      }
      const key = `${stream}:${userId}:${t.kind}:${t.online}`;
      const count = (seen.get(key) ?? 0) + 1;
      seen.set(key, count);
      if (count > 1) twice += 1;
      else latencies[t.kind].push(Date.now() - t.at);
    };

    const open = (index: number): Promise<void> => {
      const watch = sample(watchable, watchCount);
      for (const id of watch) watchers.set(id, (watchers.get(id) ?? 0) + 1);
      return connect(index, watch, 0);
    };
    const connect = (index: number, watch: number[], attempt: number): Promise<void> =>
      new Promise<void>((resolve, reject) => {
        const api = apis[index % apis.length]!;
        const req = http.get(
          `${api.url}/status/stream?watch=${watch.join(',')}`,
          { agent },
          (res) => {
            if ((res.statusCode === 503 || res.statusCode === 408) && attempt < 5) {
              // Refused or timed out under load: come back as a client would.
              res.resume();
              setTimeout(
                () => void connect(index, watch, attempt + 1).then(resolve, reject),
                1_000,
              );
              return;
            }
            if (res.statusCode !== 200) {
              reject(new Error(`stream ${index}: status ${res.statusCode}`));
              res.resume();
              return;
            }
            res.setEncoding('utf8');
            let buffer = '';
            res.on('data', (chunk: string) => {
              buffer += chunk;
              let end: number;
              while ((end = buffer.indexOf('\n\n')) >= 0) {
                const block = buffer.slice(0, end);
                buffer = buffer.slice(end + 2);
                if (block.startsWith('event: snapshot')) resolve();
                else if (block.startsWith('event: change')) {
                  const row = JSON.parse(block.slice(block.indexOf('data: ') + 6)) as {
                    user_id: number;
                    is_online: boolean;
                  };
                  onChange(index, row.user_id, row.is_online);
                }
              }
            });
            res.on('error', () => undefined);
          },
        );
        req.on('error', reject);
        requests.push(req);
      });
    let next = 0;
    await Promise.all(
      Array.from({ length: 50 }, async () => {
        while (next < streamCount) await open(next++);
      }),
    );
    await sleep(3_000);

    // The database backends of the API processes (by application_name), sampled as they come.
    const backendCpu = new Map<number, { first: number; last: number }>();
    const sampleBackends = async () => {
      const { rows } = await sql<{ pid: number }>`
        SELECT pid FROM pg_stat_activity
        WHERE datname = current_database() AND application_name = 'pulse-api'`.execute(db);
      for (const { pid } of rows) {
        const cpu = cpuOf(pid);
        if (cpu === undefined) continue;
        const known = backendCpu.get(pid);
        if (known) known.last = cpu;
        else backendCpu.set(pid, { first: measuring ? 0 : cpu, last: cpu });
      }
    };
    await sampleBackends();
    const metricsText = async () =>
      (await Promise.all(apis.map(async (a) => (await fetch(`${a.url}/metrics`)).text()))).join(
        '\n',
      );
    const metricSum = (text: string, name: string) =>
      text
        .split('\n')
        .filter((line) => line.startsWith(`${name} `) || line.startsWith(`${name}{`))
        .reduce((sum, line) => sum + Number(line.split(' ').at(-1)), 0);
    const before = await metricsText();
    const apiCpuBefore = apis.reduce((sum, a) => sum + a.cpuSeconds(), 0);
    const sampler = setInterval(() => void sampleBackends().catch(() => undefined), 500);
    measuring = true;
    const started = Date.now();

    for (let round = 0; round < rounds; round += 1) {
      const roundStart = Date.now();
      const third = Math.floor(changesPerRound / 3);
      const offlineNow = offlinePool.filter((id) => !online.has(id));
      const comingOn = sample(offlineNow, third);
      const stable = [...online].filter((id) => !leaving.has(id));
      const picked = sample(stable, 2 * third);
      const goingOff = picked.slice(0, third);
      const expiring = picked.slice(third);

      // Known before the statement (an event may beat the driver back), timed from its commit.
      const on = comingOn.map((id) => {
        const t: Transition = { online: true, kind: 'online', at: Date.now() };
        transitions.set(id, t);
        online.add(id);
        leaving.delete(id); // left in an earlier phase, back now: its client beats again
        expected += watchers.get(id) ?? 0;
        return t;
      });
      await recordHeartbeats(db, comingOn);
      for (const t of on) t.at = Date.now();
      const off = goingOff.map((id) => {
        const t: Transition = { online: false, kind: 'offline', at: Date.now() };
        transitions.set(id, t);
        online.delete(id);
        expected += watchers.get(id) ?? 0;
        return t;
      });
      await setOffline(db, goingOff);
      for (const t of off) t.at = Date.now();
      // They stop beating: offline when their last heartbeat passes the threshold.
      for (const id of expiring) leaving.add(id);
      // A refresh already under way may still beat them once: their last heartbeat is after it.
      await refreshing.current;
      const { rows } = await sql<{ user_id: string; crossing: number }>`
        SELECT user_id,
               extract(epoch FROM last_hb + make_interval(secs => ${thresholdSeconds}))::float8 * 1000
                 AS crossing
        FROM pulse WHERE user_id = ANY(${expiring}::bigint[])`.execute(db);
      for (const row of rows) {
        const id = Number(row.user_id);
        transitions.set(id, { online: false, kind: 'threshold', at: Number(row.crossing) });
        expected += watchers.get(id) ?? 0;
        setTimeout(() => online.delete(id), Number(row.crossing) - Date.now()).unref();
      }
      await sleep(roundMs - (Date.now() - roundStart));
    }
    // The last threshold crossings come one threshold after the last round, then their events.
    await sleep(thresholdSeconds * 1000 + 3_000);
    await sampleBackends();
    measuring = false;
    clearInterval(sampler);
    const seconds = (Date.now() - started) / 1000;
    const after = await metricsText();
    const delta = (name: string) => metricSum(after, name) - metricSum(before, name);
    let dbSeconds = 0;
    for (const { first, last } of backendCpu.values()) dbSeconds += last - first;
    const delivered = Object.values(latencies).reduce((sum, l) => sum + l.length, 0);
    const kinds: Kind[] = ['online', 'offline', 'threshold'];
    return {
      apis: apiCount,
      streams: streamCount,
      measuredSeconds: Math.round(seconds),
      dbCores: dbSeconds / seconds,
      apiCores: (apis.reduce((sum, a) => sum + a.cpuSeconds(), 0) - apiCpuBefore) / seconds,
      apiRssMb: Math.max(...apis.map((a) => a.rssMb())),
      logReadsPerSecond: delta('pulse_change_detection_statement_duration_seconds_count') / seconds,
      detectorStatementsPerSecond: delta('pulse_offline_detector_statements_total') / seconds,
      detectorCheckedPerSecond: delta('pulse_offline_detector_checked_total') / seconds,
      p99Ms: Object.fromEntries(kinds.map((k) => [k, percentile(latencies[k], 99)])) as Record<
        Kind,
        number
      >,
      p50Ms: Object.fromEntries(kinds.map((k) => [k, percentile(latencies[k], 50)])) as Record<
        Kind,
        number
      >,
      delivered,
      expected,
      unexpected,
      twice,
    };
  } finally {
    for (const req of requests) req.destroy();
    agent.destroy();
    for (const api of apis) await api.stop();
  }
}

await main();

/**
 * npm run bench:stream: the live stream at scale, in one run on this machine.
 *
 *   flock /tmp/pulse-bench.lock npm run bench:stream
 *   BENCH_STREAMS=10000 BENCH_WATCH=100 BENCH_USERS=20000 BENCH_CHANGES=2000 BENCH_ROUNDS=6
 *
 * One compiled API process holds BENCH_STREAMS open streams, each watching BENCH_WATCH ids drawn
 * from BENCH_USERS users and holding the presence of its own user. Every 10 s, BENCH_CHANGES of the
 * watched users change state: half come online (a committed upsert, as any replica would write),
 * half go offline by crossing the threshold (their last heartbeat is set so that it expires 1 s
 * later, by the database clock). Online users are kept fresh by the driver meanwhile, as their
 * clients would. Measured: delivery latency (commit or threshold crossing to the event at the
 * client), events delivered against expected, change-detection and held-presence statements per
 * second (from the API's /metrics), API RSS and CPU.
 */
import http from 'node:http';
import os from 'node:os';
import { readFileSync } from 'node:fs';
import { execSync } from 'node:child_process';
import { openBenchDatabase, startApi, type ApiProcess } from './support.ts';

const streamCount = Number(process.env.BENCH_STREAMS ?? 10_000);
const watchCount = Number(process.env.BENCH_WATCH ?? 100);
const users = Number(process.env.BENCH_USERS ?? 20_000);
const changesPerRound = Number(process.env.BENCH_CHANGES ?? 2_000);
const rounds = Number(process.env.BENCH_ROUNDS ?? 6);
const roundMs = 10_000;
const pollMs = Number(process.env.BENCH_POLL_INTERVAL_MS ?? 1_000);
const thresholdSeconds = 20;
const HOLDER_BASE = 1_000_000;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const fmt = (n: number, digits = 0) =>
  n.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits });

function sample<T>(from: T[], count: number): T[] {
  const copy = [...from];
  for (let i = 0; i < count && i < copy.length; i += 1) {
    const j = i + Math.floor(Math.random() * (copy.length - i));
    [copy[i], copy[j]] = [copy[j]!, copy[i]!];
  }
  return copy.slice(0, count);
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

/** Sums every sample of a metric whose labels include `labels` in Prometheus text. */
function metric(text: string, name: string, labels = ''): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const match = /^(\w+)(\{[^}]*\})? (\S+)$/.exec(line);
    if (match?.[1] !== name || !(match[2] ?? '').includes(labels)) continue;
    sum += Number(match[3]);
  }
  return sum;
}

function cpuSeconds(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100; // clock ticks (CLK_TCK = 100);
}

interface Transition {
  online: boolean;
  at: number;
}

async function main(): Promise<void> {
  const limit = Number(execSync('ulimit -n', { shell: '/bin/bash' }).toString().trim());
  console.error(`bench:stream: ulimit -n = ${limit}`);
  if (limit < streamCount + 1_000) {
    throw new Error(`ulimit -n is ${limit}: raise it above ${streamCount + 1_000} first`);
  }

  const db = await openBenchDatabase('pulse_bench_stream');
  let api: ApiProcess | undefined;
  const agent = new http.Agent({ keepAlive: false, maxSockets: Infinity });
  const requests: http.ClientRequest[] = [];
  let refresher: NodeJS.Timeout | undefined;
  try {
    const online = new Set(
      sample(
        Array.from({ length: users }, (_, i) => i + 1),
        users / 2,
      ),
    );
    await db.query(`INSERT INTO pulse (user_id, last_hb) SELECT unnest($1::bigint[]), now()`, [
      [...online],
    ]);
    // Online users stay online through the driver's own heartbeats, as their clients would.
    const leaving = new Set<number>();
    refresher = setInterval(() => {
      const ids = [...online].filter((id) => !leaving.has(id));
      void db.query(`UPDATE pulse SET last_hb = now() WHERE user_id = ANY($1::bigint[])`, [ids]);
    }, 5_000);
    api = await startApi(db.url, {
      STREAM_MAX_OPEN: String(streamCount + 100),
      STREAM_POLL_INTERVAL_MS: String(pollMs),
      ONLINE_THRESHOLD_SECONDS: String(thresholdSeconds),
      PG_POOL_MAX: '10',
    });
    const port = new URL(api.url).port;

    // What each stream watches, and who watches each user (expected deliveries).
    const watchers = new Map<number, number>();
    const transitions = new Map<number, Transition>();
    const latencies: number[] = [];
    const onLatencies: number[] = [];
    const offLatencies: number[] = [];
    let measuring = false;
    let unexpected = 0;
    let expected = 0;
    let ended = 0;

    const onChange = (userId: number, isOnline: boolean) => {
      if (!measuring) return;
      const t = transitions.get(userId);
      if (t && t.online === isOnline) {
        latencies.push(Date.now() - t.at);
        (isOnline ? onLatencies : offLatencies).push(Date.now() - t.at);
      } else unexpected += 1;
    };

    const open = (index: number) =>
      new Promise<void>((resolve, reject) => {
        const watch = sample(
          Array.from({ length: users }, (_, i) => i + 1),
          watchCount,
        );
        for (const id of watch) watchers.set(id, (watchers.get(id) ?? 0) + 1);
        const req = http.get(
          {
            host: '127.0.0.1',
            port,
            agent,
            path: `/status/stream?watch=${watch.join(',')}&user_id=${HOLDER_BASE + index}`,
          },
          (res) => {
            if (res.statusCode !== 200) {
              reject(new Error(`stream ${index}: status ${res.statusCode}`));
              res.resume();
              return;
            }
            res.setEncoding('utf8');
            let buffer = '';
            let first = true;
            res.on('data', (chunk: string) => {
              buffer += chunk;
              let end: number;
              while ((end = buffer.indexOf('\n\n')) >= 0) {
                const block = buffer.slice(0, end);
                buffer = buffer.slice(end + 2);
                if (block.startsWith('event: snapshot')) {
                  if (first) resolve();
                  first = false;
                } else if (block.startsWith('event: change')) {
                  const row = JSON.parse(block.slice(block.indexOf('data: ') + 6)) as {
                    user_id: number;
                    is_online: boolean;
                  };
                  onChange(row.user_id, row.is_online);
                }
              }
            });
            res.on('end', () => (ended += 1));
            res.on('error', () => undefined);
          },
        );
        req.on('error', reject);
        requests.push(req);
      });

    console.error(`bench:stream: opening ${streamCount} streams`);
    const opening = Date.now();
    let next = 0;
    await Promise.all(
      Array.from({ length: 100 }, async () => {
        while (next < streamCount) await open(next++);
      }),
    );
    const openSeconds = (Date.now() - opening) / 1000;
    const openRssMb = api.rssMb();
    console.error(`bench:stream: ${streamCount} streams open in ${fmt(openSeconds, 1)} s`);

    await sleep(3_000);
    const metricsBefore = await (await fetch(`${api.url}/metrics`)).text();
    const cpuBefore = cpuSeconds(api.pid);
    let peakRssMb = api.rssMb();
    const rss = setInterval(() => (peakRssMb = Math.max(peakRssMb, api!.rssMb())), 500);
    // Where the memory is at the highest RSS seen by a scrape (V8's heap, or memory outside it).
    let heapAtPeak = { rssMb: 0, totalMb: 0, usedMb: 0, newSpaceMb: 0, externalMb: 0 };
    const heapSampler = setInterval(() => {
      void fetch(`${api!.url}/metrics`)
        .then((answer) => answer.text())
        .then((text) => {
          const rssMb = api!.rssMb();
          if (rssMb <= heapAtPeak.rssMb) return;
          const mb = (name: string, labels = '') => metric(text, name, labels) / 1048576;
          heapAtPeak = {
            rssMb,
            totalMb: mb('nodejs_heap_size_total_bytes'),
            usedMb: mb('nodejs_heap_size_used_bytes'),
            newSpaceMb: mb('nodejs_heap_space_size_total_bytes', 'space="new"'),
            externalMb: mb('nodejs_external_memory_bytes'),
          };
        })
        .catch(() => undefined);
    }, 1_000);
    const started = Date.now();
    measuring = true;

    for (let round = 0; round < rounds; round += 1) {
      const roundStart = Date.now();
      const offline = Array.from({ length: users }, (_, i) => i + 1).filter(
        (id) => !online.has(id),
      );
      const comingOn = sample(offline, changesPerRound / 2);
      const goingOff = sample([...online], changesPerRound / 2);
      await db.query(
        `INSERT INTO pulse (user_id, last_hb) SELECT unnest($1::bigint[]), now()
         ON CONFLICT (user_id) DO UPDATE SET last_hb = EXCLUDED.last_hb`,
        [comingOn],
      );
      const committed = Date.now();
      for (const id of comingOn) {
        transitions.set(id, { online: true, at: committed });
        online.add(id);
        expected += watchers.get(id) ?? 0;
      }
      for (const id of goingOff) leaving.add(id);
      const { rows } = await db.query<{ user_id: string; crossing_ms: number }>(
        `UPDATE pulse SET last_hb = now() - make_interval(secs => $2 - 1)
         WHERE user_id = ANY($1::bigint[])
         RETURNING user_id, extract(epoch FROM last_hb + make_interval(secs => $2)) * 1000 AS crossing_ms`,
        [goingOff, thresholdSeconds],
      );
      for (const row of rows) {
        const id = Number(row.user_id);
        transitions.set(id, { online: false, at: Number(row.crossing_ms) });
        online.delete(id);
        expected += watchers.get(id) ?? 0;
      }
      await sleep(roundMs - (Date.now() - roundStart));
      for (const id of goingOff) leaving.delete(id);
    }
    await sleep(2_000); // the last round's events
    measuring = false;
    const seconds = (Date.now() - started) / 1000;
    const cpu = (cpuSeconds(api.pid) - cpuBefore) / seconds;
    clearInterval(rss);
    clearInterval(heapSampler);
    clearInterval(refresher);
    const metricsAfter = await (await fetch(`${api.url}/metrics`)).text();
    const delta = (name: string, labels = '') =>
      metric(metricsAfter, name, labels) - metric(metricsBefore, name, labels);

    const detect = delta(
      'pulse_change_detection_statement_duration_seconds_count',
      'kind="detect"',
    );
    const describe = delta(
      'pulse_change_detection_statement_duration_seconds_count',
      'kind="describe"',
    );
    const detectSeconds = delta(
      'pulse_change_detection_statement_duration_seconds_sum',
      'kind="detect"',
    );
    const heldStatements = delta('pulse_heartbeat_flush_ids_count');
    const heldIds = delta('pulse_heartbeat_flush_ids_sum');
    const distinct = metric(metricsAfter, 'pulse_stream_watched_ids');
    const sorted = [...latencies].sort((a, b) => a - b);
    const p99 = percentile(sorted, 99);
    const target = pollMs + 500;

    console.log(`
Pulse stream benchmark: ${fmt(streamCount)} streams x ${watchCount} watched ids from ${fmt(users)} users, ${fmt(changesPerRound)} changes every 10 s, ${rounds} rounds (${fmt(seconds, 0)} s measured)
${os.cpus().length} x ${os.cpus()[0]?.model ?? 'CPU'}, Node ${process.version}; PostgreSQL: ${process.env.DATABASE_URL ? 'DATABASE_URL' : 'embedded'}; API, PostgreSQL and the ${fmt(streamCount)} clients share the machine
STREAM_POLL_INTERVAL_MS=${pollMs}, ONLINE_THRESHOLD_SECONDS=${thresholdSeconds}, ulimit -n ${limit}

| measure | value | target or reference |
|---|---|---|
| streams opened (each: held first beat + snapshot) | ${fmt(streamCount)} in ${fmt(openSeconds, 1)} s | |
| delivery latency p50 / p99 / max | ${fmt(percentile(sorted, 50))} / ${fmt(p99)} / ${fmt(sorted.at(-1) ?? NaN)} ms | p99 <= interval + 500 ms = ${target} ms: ${p99 <= target ? 'met' : 'MISSED'} |
| p99 online by commit / offline by threshold crossing | ${fmt(
      percentile(
        onLatencies.sort((a, b) => a - b),
        99,
      ),
    )} / ${fmt(
      percentile(
        offLatencies.sort((a, b) => a - b),
        99,
      ),
    )} ms | |
| change events delivered / expected | ${fmt(latencies.length)} / ${fmt(expected)} (${unexpected} unexpected) | all, none unexpected |
| change-detection statements/s (detect + describe) | ${fmt(detect / seconds, 1)} + ${fmt(describe / seconds, 1)} | distinct ids / 1,000 / interval = ${fmt(distinct)} / 1,000 / ${pollMs / 1000} s = ${fmt(Math.ceil(distinct / 1000) / (pollMs / 1000), 1)} |
| mean detect statement | ${fmt((1000 * detectSeconds) / Math.max(1, detect), 1)} ms | |
| held-presence statements/s | ${fmt(heldStatements / seconds, 2)} (${fmt(heldIds / seconds)} ids/s) | ceil(${fmt(streamCount)} streams / 2,000 ids per statement) / ${fmt(thresholdSeconds / 3, 1)} s = ${fmt(Math.ceil(streamCount / 2000) / (thresholdSeconds / 3), 2)} |
| API RSS with every stream open / peak while measuring | ${fmt(openRssMb)} / ${fmt(peakRssMb)} MB | < 400 MB: ${peakRssMb < 400 ? 'met' : 'MISSED'} |
| V8 heap at the highest RSS a scrape saw (${fmt(heapAtPeak.rssMb)} MB): allocated / in use / of it young generation; external | ${fmt(heapAtPeak.totalMb)} / ${fmt(heapAtPeak.usedMb)} / ${fmt(heapAtPeak.newSpaceMb)} MB; ${fmt(heapAtPeak.externalMb)} MB | |
| API CPU | ${fmt(cpu * 100)}% of one core | |
| streams ended early | ${ended} | 0 |
`);
  } finally {
    clearInterval(refresher);
    for (const req of requests) req.destroy();
    agent.destroy();
    await api?.stop();
    await db.close();
  }
}

await main();

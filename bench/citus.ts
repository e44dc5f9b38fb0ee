/**
 * npm run bench:citus: the same API on plain PostgreSQL and on Citus, side by side in one run, and
 * the database CPU each spends per heartbeat, split into coordinator and workers on Citus. Writes
 * bench/results/citus.json, which `npm run capacity` reads (docs/capacity.md).
 *
 *   CITUS_URL=postgres://postgres@127.0.0.1:55431/pulse_citus \
 *   DATABASE_URL=postgres://postgres@127.0.0.1:55434/postgres \
 *   BENCH_ROWS=1000000 BENCH_DURATION_SECONDS=10 npm run bench:citus
 *
 * CITUS_URL: a database on a Citus coordinator with the `citus` extension and its workers added
 * (docs/citus.md); DATABASE_URL: a plain PostgreSQL server, ideally from the same binaries and
 * settings. Both must run on this machine: database CPU is read from /proc, for every process of
 * each server (postmaster and all its children: backends, WAL writer, checkpointer, Citus
 * daemons), so it includes commit and WAL work that pg_stat_statements does not count.
 */
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { processCpuSeconds } from './process-cpu.ts';
import {
  fillTable,
  openBenchDatabase,
  prepare,
  randomUserId,
  runLoad,
  startApi,
  type BenchDatabase,
  type BenchRequest,
  type LoadResult,
} from './support.ts';

const citusUrl = process.env.CITUS_URL;
const plainUrl = process.env.DATABASE_URL;
if (!citusUrl || !plainUrl) {
  console.error(
    'bench:citus needs CITUS_URL (a Citus coordinator) and DATABASE_URL (plain PostgreSQL)',
  );
  process.exit(2);
}
const rows = Number(process.env.BENCH_ROWS ?? 1_000_000);
const durationSeconds = Number(process.env.BENCH_DURATION_SECONDS ?? 10);
const WARM_UP_SECONDS = 2;
const ID_LIST = 1000;
const output = fileURLToPath(new URL('./results/citus.json', import.meta.url));

/** A server's processes: its postmaster and every child, read from /proc. */
function serverProcesses(postmasterPid: number): number[] {
  const pids = [postmasterPid];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === postmasterPid) pids.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return pids;
}

async function postmasterOf(url: string): Promise<number> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    const { rows: found } = await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
    const stat = readFileSync(`/proc/${found[0]!.pid}/stat`, 'utf8');
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
  } finally {
    await client.end();
  }
}

/** CPU seconds a whole server spends between start() and stop(), sampled every 200 ms. */
function watchServer(postmasterPid: number) {
  const seen = new Map<number, { first: number; last: number }>();
  const sample = (baseline: boolean) => {
    for (const pid of serverProcesses(postmasterPid)) {
      const cpu = processCpuSeconds(pid);
      if (cpu === undefined) continue;
      const entry = seen.get(pid);
      if (entry) entry.last = cpu;
      else seen.set(pid, { first: baseline ? cpu : 0, last: cpu });
    }
  };
  let timer: NodeJS.Timeout | undefined;
  return {
    start() {
      sample(true);
      timer = setInterval(() => sample(false), 200);
    },
    stop(): number {
      clearInterval(timer);
      sample(false);
      let seconds = 0;
      for (const { first, last } of seen.values()) seconds += last - first;
      return seconds;
    },
  };
}

interface Server {
  role: 'plain' | 'coordinator' | 'worker';
  name: string;
  postmasterPid: number;
}

async function serversOf(kind: 'plain' | 'citus', url: string): Promise<Server[]> {
  const own: Server = {
    role: kind === 'plain' ? 'plain' : 'coordinator',
    name: new URL(url).port,
    postmasterPid: await postmasterOf(url),
  };
  if (kind === 'plain') return [own];
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    const { rows: workers } = await client.query<{ node_name: string; node_port: number }>(
      'SELECT node_name, node_port FROM citus_get_active_worker_nodes() ORDER BY node_port',
    );
    const servers = [own];
    for (const worker of workers) {
      const workerUrl = new URL(url);
      workerUrl.hostname = worker.node_name;
      workerUrl.port = String(worker.node_port);
      servers.push({
        role: 'worker',
        name: String(worker.node_port),
        postmasterPid: await postmasterOf(workerUrl.toString()),
      });
    }
    return servers;
  } finally {
    await client.end();
  }
}

const ids = () =>
  JSON.stringify(Array.from({ length: ID_LIST }, () => ({ user_id: randomUserId(rows) })));

interface Scenario {
  name: 'single' | 'gateway' | 'batch';
  connections: number;
  idsPerRequest: number;
  requests: BenchRequest[];
}

const scenarios: Scenario[] = [
  {
    name: 'single',
    connections: 32,
    idsPerRequest: 1,
    // Many distinct users, picked at random per request (runLoad): with 50, a group-commit flush
    // of 32 connections' heartbeats wrote each user once for many requests, and the database
    // CPU per heartbeat came out too low.
    requests: prepare(20_000, () => ({
      method: 'POST',
      path: '/status/update',
      body: JSON.stringify({ user_id: randomUserId(rows) }),
    })),
  },
  {
    name: 'gateway',
    connections: 8,
    idsPerRequest: ID_LIST,
    requests: prepare(50, () => ({ method: 'POST', path: '/status/update', body: ids() })),
  },
  {
    name: 'batch',
    connections: 2,
    idsPerRequest: ID_LIST,
    requests: prepare(50, () => ({ method: 'POST', path: '/status/batch', body: ids() })),
  },
];

interface Measured {
  load: LoadResult;
  /** Database CPU per id (heartbeat or id read), in µs, by server role. */
  cpuUsPerId: Record<string, number>;
}

async function measure(db: BenchDatabase, servers: Server[], scenario: Scenario) {
  const api = await startApi(db.url, { BATCH_MAX_IDS: String(ID_LIST) });
  try {
    const base = { url: api.url, requests: scenario.requests, connections: scenario.connections };
    await runLoad({ ...base, durationSeconds: WARM_UP_SECONDS });
    const watches = servers.map((server) => ({ server, watch: watchServer(server.postmasterPid) }));
    for (const { watch } of watches) watch.start();
    const load = await runLoad({ ...base, durationSeconds, api });
    const idsDone = load.requestsPerSecond * durationSeconds * scenario.idsPerRequest;
    const cpuUsPerId: Record<string, number> = {};
    for (const { server, watch } of watches) {
      const key = server.role === 'worker' ? 'workers' : server.role;
      cpuUsPerId[key] = (cpuUsPerId[key] ?? 0) + (watch.stop() * 1e6) / Math.max(1, idsDone);
    }
    return { load, cpuUsPerId } satisfies Measured;
  } finally {
    await api.stop();
  }
}

const started = Date.now();
console.error(
  `bench:citus: ${rows} rows, ${scenarios.length} scenarios x ${durationSeconds + WARM_UP_SECONDS} s on each of plain and Citus, plus filling: a few minutes`,
);
const results: Record<'plain' | 'citus', Record<string, Measured>> = { plain: {}, citus: {} };
const describe: Record<string, unknown> = {};
for (const [kind, url] of [
  ['plain', plainUrl],
  ['citus', citusUrl],
] as const) {
  const db = await openBenchDatabase('pulse_bench_citus', url);
  try {
    console.error(`bench:citus: ${kind}, filling ${rows} rows`);
    await fillTable(db, rows);
    const servers = await serversOf(kind, url);
    const { rows: info } = await db.query<{
      version: string;
      citus: string | null;
      shards: string;
      fsync: string;
      synchronous_commit: string;
      shared_buffers: string;
    }>(
      `SELECT current_setting('server_version') AS version,
              (SELECT extversion FROM pg_extension WHERE extname = 'citus') AS citus,
              coalesce(current_setting('citus.shard_count', true), '') AS shards,
              current_setting('fsync') AS fsync,
              current_setting('synchronous_commit') AS synchronous_commit,
              current_setting('shared_buffers') AS shared_buffers`,
    );
    describe[kind] = { ...info[0], servers: servers.map((s) => `${s.role} :${s.name}`) };
    for (const scenario of scenarios) {
      console.error(`bench:citus: ${kind}, ${scenario.name}`);
      results[kind][scenario.name] = await measure(db, servers, scenario);
    }
  } finally {
    await db.close();
  }
}

const round = (n: number, digits = 1) => Math.round(n * 10 ** digits) / 10 ** digits;
const { plain, citus } = results;
const perScenario = (r: Record<string, Measured>) =>
  Object.fromEntries(
    Object.entries(r).map(([name, m]) => [
      name,
      {
        requestsPerSecond: round(m.load.requestsPerSecond),
        p50Ms: m.load.p50,
        p99Ms: m.load.p99,
        errors: m.load.errors,
        non2xx: m.load.non2xx,
        databaseCpuUsPerId: Object.fromEntries(
          Object.entries(m.cpuUsPerId).map(([k, v]) => [k, round(v)]),
        ),
      },
    ]),
  );
const cpu = (scenario: string, role: string) => round(citus[scenario]!.cpuUsPerId[role] ?? NaN);
const result = {
  schema: 1,
  command: 'npm run bench:citus',
  measuredAt: new Date().toISOString(),
  durationSeconds: Math.round((Date.now() - started) / 1000),
  machine: {
    label: `${os.cpus().length} x ${os.cpus()[0]?.model.trim() ?? 'cpu'}, ${Math.round(os.totalmem() / 2 ** 30)} GB; plain, coordinator and workers on this one machine`,
    hostname: os.hostname(),
    cpus: os.cpus().length,
    node: process.version,
  },
  rows,
  runSecondsPerScenario: durationSeconds,
  /** API settings given to this run through the environment (defaults otherwise). */
  apiEnvironment: Object.fromEntries(
    Object.entries(process.env).filter(([name]) => name.startsWith('HEARTBEAT_')),
  ),
  servers: describe,
  /** Database CPU per heartbeat (µs), what `npm run capacity` reads. */
  coordinatorCpuUsPerHeartbeat: {
    groupCommit: cpu('single', 'coordinator'),
    gatewayBatch: cpu('gateway', 'coordinator'),
  },
  workerCpuUsPerHeartbeat: {
    groupCommit: cpu('single', 'workers'),
    gatewayBatch: cpu('gateway', 'workers'),
  },
  plainCpuUsPerHeartbeat: {
    groupCommit: round(plain.single!.cpuUsPerId.plain ?? NaN),
    gatewayBatch: round(plain.gateway!.cpuUsPerId.plain ?? NaN),
  },
  citusOverPlain: {
    batchP50: round(citus.batch!.load.p50 / plain.batch!.load.p50, 2),
    batchP99: round(citus.batch!.load.p99 / plain.batch!.load.p99, 2),
    gatewayThroughput: round(
      citus.gateway!.load.requestsPerSecond / plain.gateway!.load.requestsPerSecond,
      2,
    ),
    singleThroughput: round(
      citus.single!.load.requestsPerSecond / plain.single!.load.requestsPerSecond,
      2,
    ),
  },
  plain: perScenario(plain),
  citus: perScenario(citus),
};
writeFileSync(output, `${JSON.stringify(result, null, 2)}\n`);
console.log(JSON.stringify({ citusOverPlain: result.citusOverPlain }, null, 2));
console.log(`wrote ${path.relative(process.cwd(), output)}`);

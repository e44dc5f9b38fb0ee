/**
 * npm run bench:citus: the same API on plain PostgreSQL, on Citus through the coordinator, and on
 * Citus with a pool per worker (DATABASE_URL listing the workers, docs/citus.md), side by side in
 * one run (each scenario runs on the three in turn), and the database CPU each spends per
 * heartbeat, split into coordinator and workers on Citus. Then, with the API on the workers, the
 * last worker is stopped under single-heartbeat load: how many heartbeats of users on the other
 * worker are still accepted, and whether any answer is a 500. Writes bench/results/citus.json,
 * which `npm run capacity` reads (docs/capacity.md).
 *
 *   CITUS_URL=postgres://postgres@127.0.0.1:9700/pulse_citus \
 *   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
 *   BENCH_WORKER_STOP='su postgres -c "pg_ctl -D /data/{port} -w stop -m fast"' \
 *   BENCH_WORKER_START='su postgres -c "pg_ctl -D /data/{port} -l /data/{port}.log -w start"' \
 *   BENCH_ROWS=1000000 BENCH_DURATION_SECONDS=10 npm run bench:citus
 *
 * BENCH_WORKER_STOP and BENCH_WORKER_START: shell commands that stop and start the worker whose
 * port replaces `{port}`; unset, the worker-down scenario is skipped (and says so in the JSON).
 * BENCH_WORKERS_OPTIONS: server settings added to the API's connections to the workers, e.g.
 * `-c citus.enable_local_execution=off` (docs/citus.md, "Measured").
 *
 * CITUS_URL: a database on a Citus coordinator with the `citus` extension and its workers added
 * (docs/citus.md); DATABASE_URL: a plain PostgreSQL server, ideally from the same binaries and
 * settings. Both must run on this machine: database CPU is read from /proc, for every process of
 * each server (postmaster and all its children: backends, WAL writer, checkpointer, Citus
 * daemons), so it includes commit and WAL work that pg_stat_statements does not count.
 */
import { exec } from 'node:child_process';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { processCpuSeconds } from './process-cpu.ts';
import {
  fillTable,
  openBenchDatabase,
  prepare,
  randomUserId,
  runLoad,
  sleep,
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
  host: string;
  port: number;
}

async function serversOf(kind: 'plain' | 'citus', url: string): Promise<Server[]> {
  const own: Server = {
    role: kind === 'plain' ? 'plain' : 'coordinator',
    name: new URL(url).port,
    postmasterPid: await postmasterOf(url),
    host: new URL(url).hostname,
    port: Number(new URL(url).port || 5432),
  };
  if (kind === 'plain') return [own];
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    const { rows: workers } = await client.query<{ node_name: string; node_port: string }>(
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
        host: worker.node_name,
        port: Number(worker.node_port),
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

async function measure(apiDatabaseUrl: string, servers: Server[], scenario: Scenario) {
  const api = await startApi(apiDatabaseUrl, { BATCH_MAX_IDS: String(ID_LIST) });
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

/** `url` (one host) naming every given node instead, in libpq's multi-host form (DATABASE_URL). */
function onNodes(url: string, nodes: readonly Server[]): string {
  const parsed = new URL(url);
  const auth = parsed.password ? `${parsed.username}:${parsed.password}` : parsed.username;
  const hosts = nodes.map((n) => `${n.host}:${n.port}`).join(',');
  return `${parsed.protocol}//${auth}@${hosts}${parsed.pathname}${parsed.search}`;
}

/** `url` with `extra` appended to its `options` parameter. */
function withOptions(url: string, extra: string | undefined): string {
  if (!extra) return url;
  const parsed = new URL(url);
  const options = parsed.searchParams.get('options');
  parsed.searchParams.set('options', options ? `${options} ${extra}` : extra);
  return parsed.toString();
}

const run = promisify(exec);

/** Connects to `url` until it answers (a worker starting again), at most `seconds`. */
async function waitForServer(url: string, seconds: number): Promise<void> {
  const until = Date.now() + seconds * 1000;
  for (;;) {
    const client = new pg.Client({ connectionString: url });
    try {
      await client.connect();
      await client.query('SELECT 1');
      return;
    } catch (error) {
      if (Date.now() > until) throw error;
      await sleep(200);
    } finally {
      await client.end().catch(() => undefined);
    }
  }
}

interface Tally {
  sent: number;
  accepted: number;
  status503: number;
  status500: number;
  otherStatus: number;
  failed: number;
}

const tally = (): Tally => ({
  sent: 0,
  accepted: 0,
  status503: 0,
  status500: 0,
  otherStatus: 0,
  failed: 0,
});

/**
 * With the API on the workers, single heartbeats of users on each worker (`connections` loops,
 * users at random), the last worker stopped under that load and started again afterwards.
 */
async function workerDown(
  db: BenchDatabase,
  workersUrl: string,
  workers: Server[],
  commands: { stop: string; start: string },
) {
  const victim = workers[workers.length - 1]!;
  const sampleIds = Array.from({ length: 20_000 }, () => randomUserId(rows));
  const { rows: placed } = await db.query<{ id: string; port: number }>(
    `SELECT id::text, n.nodeport AS port FROM unnest($1::bigint[]) id
     JOIN pg_dist_placement pl ON pl.shardid = get_shard_id_for_distribution_column('pulse', id)
     JOIN pg_dist_node n ON n.groupid = pl.groupid`,
    [sampleIds],
  );
  const users = placed.map((r) => ({ id: Number(r.id), healthy: r.port !== victim.port }));
  const api = await startApi(workersUrl, { BATCH_MAX_IDS: String(ID_LIST) });
  const phases = { before: { healthy: tally(), victim: tally() } };
  let down = { healthy: tally(), victim: tally() };
  let current = phases.before;
  let stopping = false;
  const loop = async () => {
    while (!stopping) {
      const user = users[Math.floor(Math.random() * users.length)]!;
      const counts = user.healthy ? current.healthy : current.victim;
      counts.sent += 1;
      try {
        const response = await fetch(`${api.url}/status/update`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ user_id: user.id }),
        });
        await response.arrayBuffer();
        if (response.status === 200) counts.accepted += 1;
        else if (response.status === 503) counts.status503 += 1;
        else if (response.status === 500) counts.status500 += 1;
        else counts.otherStatus += 1;
      } catch {
        counts.failed += 1;
      }
    }
  };
  const victimUrl = new URL(workersUrl.replace(/@[^/]*\//, `@${victim.host}:${victim.port}/`));
  let stoppedAfterMs = NaN;
  let restartedAfterMs = NaN;
  try {
    const loops = Array.from({ length: 32 }, () => loop());
    await sleep(WARM_UP_SECONDS * 1000);
    phases.before = { healthy: tally(), victim: tally() };
    current = phases.before;
    await sleep(5_000);
    down = { healthy: tally(), victim: tally() };
    current = down;
    const stopAt = performance.now();
    console.error(`bench:citus: stopping the worker on :${victim.port} under load`);
    await run(commands.stop.replaceAll('{port}', String(victim.port)));
    stoppedAfterMs = Math.round(performance.now() - stopAt);
    await sleep(durationSeconds * 1000);
    stopping = true;
    await Promise.all(loops);
  } finally {
    stopping = true;
    await api.stop();
    const startAt = performance.now();
    await run(commands.start.replaceAll('{port}', String(victim.port)));
    await waitForServer(victimUrl.toString(), 60);
    restartedAfterMs = Math.round(performance.now() - startAt);
  }
  const ratio = (t: Tally) => round(t.accepted / Math.max(1, t.sent), 3);
  const all = [phases.before.healthy, phases.before.victim, down.healthy, down.victim];
  return {
    stoppedWorker: `:${victim.port}`,
    command: 'BENCH_WORKER_STOP under load, BENCH_WORKER_START afterwards',
    stopCommandMs: stoppedAfterMs,
    restartMs: restartedAfterMs,
    windowSeconds: durationSeconds,
    before: { healthyAcceptedShare: ratio(phases.before.healthy), ...phases.before },
    down: {
      healthyAcceptedShare: ratio(down.healthy),
      healthyAcceptedPerSecond: round(down.healthy.accepted / durationSeconds),
      healthyAcceptedPerSecondBefore: round(phases.before.healthy.accepted / 5),
      ...down,
    },
    responses500: all.reduce((n, t) => n + t.status500, 0),
  };
}
const round = (n: number, digits = 1) => Math.round(n * 10 ** digits) / 10 ** digits;
const started = Date.now();
console.error(
  `bench:citus: ${rows} rows, ${scenarios.length} scenarios x ${durationSeconds + WARM_UP_SECONDS} s on each of plain, Citus through the coordinator and Citus through the workers, a worker stopped, plus filling: several minutes`,
);
type Kind = 'plain' | 'coordinator' | 'workers';
const results: Record<Kind, Record<string, Measured>> = { plain: {}, coordinator: {}, workers: {} };
const describe: Record<string, unknown> = {};
const plainDb = await openBenchDatabase('pulse_bench_citus', plainUrl);
const citusDb = await openBenchDatabase('pulse_bench_citus', citusUrl);
let workerDownResult: Awaited<ReturnType<typeof workerDown>> | { skipped: string };
try {
  const servers: Record<'plain' | 'citus', Server[]> = {
    plain: await serversOf('plain', plainUrl),
    citus: await serversOf('citus', citusUrl),
  };
  const workers = servers.citus.filter((s) => s.role === 'worker');
  // BENCH_WORKERS_OPTIONS: server settings for the API's pools on the workers (`-c name=value`).
  const workersOptions = process.env.BENCH_WORKERS_OPTIONS;
  const workersUrl = onNodes(withOptions(citusDb.url, workersOptions), workers);
  const apiUrl: Record<Kind, string> = {
    plain: plainDb.url,
    coordinator: citusDb.url,
    workers: workersUrl,
  };
  for (const [kind, db] of [
    ['plain', plainDb],
    ['citus', citusDb],
  ] as const) {
    console.error(`bench:citus: ${kind}, filling ${rows} rows`);
    await fillTable(db, rows);
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
    describe[kind] = { ...info[0], servers: servers[kind].map((s) => `${s.role} :${s.name}`) };
  }
  // Each scenario on the three in turn: the ratios compare runs seconds apart.
  for (const scenario of scenarios) {
    for (const kind of ['plain', 'coordinator', 'workers'] as const) {
      console.error(`bench:citus: ${scenario.name}, ${kind}`);
      const watched = kind === 'plain' ? servers.plain : servers.citus;
      results[kind][scenario.name] = await measure(apiUrl[kind], watched, scenario);
    }
  }
  const stop = process.env.BENCH_WORKER_STOP;
  const start = process.env.BENCH_WORKER_START;
  workerDownResult =
    stop && start && workers.length >= 2
      ? await workerDown(citusDb, workersUrl, workers, { stop, start })
      : { skipped: 'BENCH_WORKER_STOP and BENCH_WORKER_START unset, or fewer than two workers' };
} finally {
  await plainDb.close();
  await citusDb.close();
}

const { plain, coordinator, workers } = results;
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
const cpu = (of: Record<string, Measured>, scenario: string, role: string) =>
  round(of[scenario]!.cpuUsPerId[role] ?? NaN);
const cpuPerHeartbeat = (of: Record<string, Measured>, role: string) => ({
  groupCommit: cpu(of, 'single', role),
  gatewayBatch: cpu(of, 'gateway', role),
});
const ratio = (a: number, b: number) => round(a / b, 2);
const overPlain = (of: Record<string, Measured>) => ({
  batchP50: ratio(of.batch!.load.p50, plain.batch!.load.p50),
  batchP99: ratio(of.batch!.load.p99, plain.batch!.load.p99),
  gatewayThroughput: ratio(
    of.gateway!.load.requestsPerSecond,
    plain.gateway!.load.requestsPerSecond,
  ),
  singleThroughput: ratio(of.single!.load.requestsPerSecond, plain.single!.load.requestsPerSecond),
});
const coordinatorShare = round(
  (workers.single!.cpuUsPerId.coordinator ?? NaN) /
    (coordinator.single!.cpuUsPerId.coordinator ?? NaN),
  3,
);
const singleOverCoordinator = ratio(
  workers.single!.load.requestsPerSecond,
  coordinator.single!.load.requestsPerSecond,
);
const workersOverPlain = overPlain(workers);
const targets = {
  coordinatorCpuPerSingleHeartbeat: {
    target:
      'API on the workers: at most 0.10 of the coordinator CPU per single heartbeat spent with the API on the coordinator',
    value: coordinatorShare,
    met: coordinatorShare <= 0.1,
  },
  singleThroughputWorkersOverCoordinator: {
    target: 'API on the workers: single heartbeats/s at least those through the coordinator',
    value: singleOverCoordinator,
    met: singleOverCoordinator >= 1,
  },
  workerDown:
    'skipped' in workerDownResult
      ? { target: 'one of two workers stopped', skipped: workerDownResult.skipped }
      : {
          target:
            'one of two workers stopped under load: at least 0.90 of single heartbeats of users on the other worker accepted, no 500',
          healthyAcceptedShare: workerDownResult.down.healthyAcceptedShare,
          responses500: workerDownResult.responses500,
          met:
            workerDownResult.down.healthyAcceptedShare >= 0.9 &&
            workerDownResult.responses500 === 0,
        },
  batchReadOverPlain: {
    target: 'API on the workers: POST /status/batch p50 and p99 within 1.5x of plain PostgreSQL',
    p50: workersOverPlain.batchP50,
    p99: workersOverPlain.batchP99,
    met: workersOverPlain.batchP50 <= 1.5 && workersOverPlain.batchP99 <= 1.5,
  },
};
const result = {
  schema: 2,
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
    Object.entries(process.env).filter(
      ([name]) =>
        name.startsWith('HEARTBEAT_') || name === 'PG_POOL_MAX' || name === 'BENCH_WORKERS_OPTIONS',
    ),
  ),
  servers: describe,
  /** What `npm run capacity` reads: the API connected to the workers (a pool per worker). */
  apiConnectedTo: 'workers',
  /** Database CPU per heartbeat (µs), the API on the workers. */
  coordinatorCpuUsPerHeartbeat: cpuPerHeartbeat(workers, 'coordinator'),
  workerCpuUsPerHeartbeat: cpuPerHeartbeat(workers, 'workers'),
  /** The same with the API connected to the coordinator only. */
  throughCoordinator: {
    coordinatorCpuUsPerHeartbeat: cpuPerHeartbeat(coordinator, 'coordinator'),
    workerCpuUsPerHeartbeat: cpuPerHeartbeat(coordinator, 'workers'),
  },
  plainCpuUsPerHeartbeat: cpuPerHeartbeat(plain, 'plain'),
  targets,
  /** Citus with the API on the workers over plain PostgreSQL. */
  citusOverPlain: workersOverPlain,
  coordinatorOverPlain: overPlain(coordinator),
  plain: perScenario(plain),
  coordinator: perScenario(coordinator),
  workers: perScenario(workers),
  workerDown: workerDownResult,
};
writeFileSync(output, `${JSON.stringify(result, null, 2)}\n`);
console.log(JSON.stringify({ targets, citusOverPlain: result.citusOverPlain }, null, 2));
console.log(`wrote ${path.relative(process.cwd(), output)}`);

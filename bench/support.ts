/** What the benchmarks share: a database to fill, the API as a child process, an autocannon run. */
import { execSync, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import autocannon from 'autocannon';
import pg from 'pg';
import { freePort, startThrowawayPostgres, type EmbeddedServer } from '../dev/embedded-postgres.ts';
import { openDatabase } from '../lib/infra/db.ts';
import { createLogger } from '../lib/infra/logger.ts';
import { migrateToLatest } from '../lib/store/migrator.ts';

/**
 * The heartbeat statement of migration 0011's schema (lib/store/pulse-store.ts before devices:
 * no device columns), $1 the ids and $2 those beaten by a held stream: the "today" of
 * bench:devices, and a beat that stays valid while bench:migration-locks undoes and redoes 0012.
 */
export const HEARTBEAT_BEFORE_DEVICES = `
  WITH up AS (
    INSERT INTO pulse AS p (user_id, last_hb, online_since) SELECT hb, now(), now() FROM unnest($1::bigint[]) AS hb
    ON CONFLICT (user_id) DO UPDATE
      SET last_hb = EXCLUDED.last_hb, online_since = coalesce(p.online_since, EXCLUDED.online_since)
    RETURNING user_id, last_hb, online_since
  )
  INSERT INTO pulse_events (user_id, online, reason, at, last_seen)
  SELECT user_id, true, CASE WHEN user_id = ANY($2::bigint[]) THEN 'held' ELSE 'heartbeat' END,
         last_hb, last_hb
  FROM up WHERE online_since = last_hb`;

export interface BenchDatabase {
  url: string;
  query<R extends pg.QueryResultRow = pg.QueryResultRow>(
    text: string,
    values?: unknown[],
  ): Promise<pg.QueryResult<R>>;
  close(): Promise<void>;
}

/**
 * A freshly created and migrated database on `serverUrl` (DATABASE_URL by default), or on an
 * embedded server when there is none. close() drops it (and stops the embedded server).
 *
 * On a Citus coordinator (DATABASE_URL names a database with the `citus` extension and its
 * workers added), a schema named `name` in that database instead: Citus keeps its nodes per
 * database, so a new database would have none. The migrations distribute `pulse` there.
 */
export async function openBenchDatabase(
  name: string,
  serverUrl: string | undefined = process.env.DATABASE_URL,
): Promise<BenchDatabase> {
  let embedded: EmbeddedServer | undefined;
  if (!serverUrl) {
    embedded = await startThrowawayPostgres([
      '-c',
      'shared_buffers=512MB',
      '-c',
      'max_wal_size=4GB',
    ]);
    serverUrl = embedded.url;
  }
  const admin = async (text: string) => {
    const client = new pg.Client({ connectionString: serverUrl });
    await client.connect();
    return client.query(text).finally(() => client.end());
  };
  const { rows } = await admin(`SELECT 1 FROM pg_extension WHERE extname = 'citus'`);
  const url = new URL(serverUrl);
  let drop: string;
  if (rows.length > 0) {
    drop = `DROP SCHEMA IF EXISTS ${name} CASCADE`;
    await admin(drop);
    await admin(`CREATE SCHEMA ${name}`);
    url.searchParams.set('options', `-c search_path=${name}`);
  } else {
    drop = `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`;
    await admin(drop);
    await admin(`CREATE DATABASE ${name}`);
    url.pathname = `/${name}`;
  }
  const database = openDatabase({
    connectionString: url.toString(),
    poolMax: 4,
    applicationName: 'pulse-bench',
    logger: createLogger('pulse-bench', 'warn'),
  });
  await migrateToLatest(database.db);
  return {
    url: url.toString(),
    query: (text, values) => database.pool.query(text, values),
    async close() {
      await database.close();
      if (embedded) await embedded.stop();
      else await admin(drop);
    },
  };
}

/** rows fresh users 1..rows (last heartbeat now - ageSeconds), then VACUUM ANALYZE. */
export async function fillTable(db: BenchDatabase, rows: number, ageSeconds = 0): Promise<void> {
  const chunk = 500_000;
  for (let from = 1; from <= rows; from += chunk) {
    const to = Math.min(rows, from + chunk - 1);
    await db.query(
      `INSERT INTO pulse (user_id, last_hb)
       SELECT g, now() - make_interval(secs => $3) FROM generate_series($1::bigint, $2::bigint) g
       ON CONFLICT (user_id) DO NOTHING`,
      [from, to, ageSeconds],
    );
  }
  await db.query('VACUUM ANALYZE pulse');
}

export interface ApiProcess {
  url: string;
  pid: number;
  /** Resident set size in MB, read from /proc. */
  rssMb(): number;
  /** CPU time (user + system) the process has used so far, in seconds, read from /proc. */
  cpuSeconds(): number;
  stop(): Promise<void>;
}

// The compiled API, as production runs it (`npm run bench` builds it first).
const apiEntry = fileURLToPath(new URL('../dist/api/main.js', import.meta.url));

/** Node arguments of the process to start: the compiled API unless told otherwise. */
export async function startApi(
  databaseUrl: string,
  env: Record<string, string>,
  // --expose-gc as the API is run (npm run api, Dockerfile): heap release after a flood needs it.
  nodeArgs: string[] = ['--expose-gc', apiEntry],
): Promise<ApiProcess> {
  const port = await freePort();
  const child: ChildProcess = spawn(process.execPath, nodeArgs, {
    env: {
      ...process.env,
      DATABASE_URL: databaseUrl,
      PORT: String(port),
      LOG_LEVEL: 'warn',
      ...env,
    },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  const url = `http://127.0.0.1:${port}`;
  for (let attempt = 0; ; attempt += 1) {
    try {
      await fetch(`${url}/status/1`);
      break;
    } catch {
      if (attempt > 200 || child.exitCode !== null) throw new Error('the API did not start');
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
  return {
    url,
    pid: child.pid!,
    rssMb() {
      const status = readFileSync(`/proc/${child.pid}/status`, 'utf8');
      const kb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
      return kb / 1024;
    },
    cpuSeconds() {
      // Fields 14 and 15 of /proc/<pid>/stat (utime, stime), in clock ticks of 1/100 s (USER_HZ).
      const stat = readFileSync(`/proc/${child.pid}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      return (Number(fields[11]) + Number(fields[12])) / 100;
    },
    async stop() {
      child.kill('SIGTERM');
      if (child.exitCode === null) await once(child, 'exit');
    },
  };
}

export interface LoadResult {
  requestsPerSecond: number;
  p50: number;
  p99: number;
  errors: number;
  non2xx: number;
  peakRssMb: number;
  /** The API process's CPU time during the run divided by the requests answered, in us. */
  cpuUsPerRequest: number;
}

export interface BenchRequest {
  method: 'GET' | 'POST';
  path: string;
  body?: string;
}

export interface LoadOptions {
  url: string;
  /**
   * Built in advance; each request sent is one of them picked at random (`anyOf`). autocannon
   * then builds every request's bytes anew: about 5 us for a single heartbeat and 20 us for a
   * 22 KB body of load-generator CPU, paid alike by Pulse and the yardsticks of the same run.
   */
  requests: BenchRequest[];
  connections: number;
  durationSeconds: number;
  api?: ApiProcess;
}

/** Drives load with autocannon on 127.0.0.1 for a bounded time, sampling the API's memory. */
export async function runLoad(options: LoadOptions): Promise<LoadResult> {
  let peakRssMb = 0;
  const sampler = setInterval(() => {
    if (options.api) peakRssMb = Math.max(peakRssMb, options.api.rssMb());
  }, 250);
  const cpuBefore = options.api?.cpuSeconds() ?? NaN;
  try {
    const result = await autocannon({
      url: options.url,
      connections: options.connections,
      duration: options.durationSeconds,
      requests: anyOf(options.requests),
    });
    return {
      requestsPerSecond: result.requests.average,
      p50: result.latency.p50,
      p99: result.latency.p99,
      errors: result.errors + result.timeouts,
      non2xx: result.non2xx,
      peakRssMb,
      cpuUsPerRequest:
        (((options.api?.cpuSeconds() ?? NaN) - cpuBefore) * 1e6) /
        Math.max(1, result.requests.total),
    };
  } finally {
    clearInterval(sampler);
  }
}

/**
 * One autocannon request that becomes a request of `requests` picked at random each time it is
 * sent. Sent in turn instead, connections that start together stay in step and send the same
 * request at about the same time: their heartbeats then share a group-commit statement, which
 * writes a repeated user once, so the database did less work than the request count says
 * (docs/overload.md, session 5).
 */
export function anyOf(requests: readonly BenchRequest[]): autocannon.Request[] {
  return [
    {
      headers: { 'content-type': 'application/json' },
      setupRequest: (request) => {
        const picked = requests[Math.floor(Math.random() * requests.length)]!;
        return { ...request, ...picked };
      },
    },
  ];
}

const bareExpress = fileURLToPath(new URL('./bare-express.ts', import.meta.url));

/**
 * The yardstick for CPU per request: a bare Express 5 handler that parses the JSON body and
 * answers (bench/bare-express.ts), started like the API so the same load drives it.
 */
/** The bare handler, started with `app.listen` or through Pulse's HTTP server (see the file). */
export const startBareExpress = (server: 'express' | 'pulse' = 'express'): Promise<ApiProcess> =>
  startApi('', { BARE_SERVER: server }, ['--import', 'tsx', bareExpress]);

export const randomUserId = (rows: number): number => 1 + Math.floor(Math.random() * rows);

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** `count` distinct items of `from`, drawn at random (a partial Fisher-Yates shuffle). */
export function sample<T>(from: readonly T[], count: number): T[] {
  const copy = [...from];
  for (let i = 0; i < count && i < copy.length; i += 1) {
    const j = i + Math.floor(Math.random() * (copy.length - i));
    [copy[i], copy[j]] = [copy[j]!, copy[i]!];
  }
  return copy.slice(0, count);
}

/** Fails unless this process may open `needed` files (streams hold a socket each). */
export function requireOpenFiles(needed: number): void {
  const limit = Number(execSync('ulimit -n', { shell: '/bin/bash' }).toString().trim());
  if (limit < needed) throw new Error(`ulimit -n is ${limit}: raise it above ${needed} first`);
}

/** `count` requests, each built by `build` (with its own random ids). */
export const prepare = (count: number, build: () => BenchRequest): BenchRequest[] =>
  Array.from({ length: count }, build);

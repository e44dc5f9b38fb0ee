/**
 * Overload scenarios (docs/overload.md): far more connections than the API can serve, clients
 * that ignore Retry-After and send again at once. Each is run twice on a fresh API process in the
 * same run: at a normal connection count (the unloaded reference) and at the overload count.
 * Reported as ratios: accepted p99, accepted throughput against the reference, and the API's RSS
 * after a 3 s warm-up at 16 connections, at its peak, and after a recovery: 2 s of pause, then
 * 10 s of the warm-up's light load. The flood's RSS after it is compared with the unloaded run's
 * (the same process history without the flood): its baseline.
 *
 *   npm run bench:overload          (also part of npm run bench)
 */
import autocannon from 'autocannon';
import type { ApiProcess, BenchDatabase, BenchRequest } from './support.ts';
import { anyOf, prepare, randomUserId, startApi } from './support.ts';

export interface OverloadResult {
  acceptedPerSecond: number;
  refusedPerSecond: number;
  acceptedP50: number;
  acceptedP99: number;
  /** A connection's first request, accepted or not: includes waiting for the connection. */
  firstRequestP99: number;
  /** Neither 200 nor 503 (timeouts, resets, other statuses). */
  failures: number;
  rssBeforeMb: number;
  rssPeakMb: number;
  rssAfterMb: number;
  /** V8 heap in use (from /metrics) after the warm-up, and after the light load that follows the flood. */
  heapBeforeMb: number;
  heapAfterMb: number;
}

async function heapUsedMb(api: ApiProcess): Promise<number> {
  const text = await (await fetch(`${api.url}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith('nodejs_heap_size_used_bytes '));
  return line === undefined ? NaN : Number(line.split(' ')[1]) / 1024 / 1024;
}

const WARM_UP_CONNECTIONS = 16;
const WARM_UP_SECONDS = 3;
/**
 * Normal load after the flood, long enough for a full collection: Node's V8 does not collect an
 * idle process's garbage (its memory reducer never ran in 15 s idle, docs/overload.md), so the old
 * generation the flood filled is given back only by a collection that normal load brings on.
 */
const RECOVERY_SECONDS = 10;

async function drive(
  api: ApiProcess,
  requests: BenchRequest[],
  connections: number,
  seconds: number,
) {
  await new Promise<void>((resolve, reject) => {
    autocannon(
      {
        url: api.url,
        connections,
        duration: seconds,
        requests: anyOf(requests),
      },
      (error) => (error ? reject(error as Error) : resolve()),
    );
  });
}

const percentile = (sorted: Float64Array, p: number) =>
  sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))]!;

/** Drives `connections` clients that never wait before sending again; latency of 200s only. */
export async function measureOverload(options: {
  api: ApiProcess;
  requests: BenchRequest[];
  connections: number;
  durationSeconds: number;
}): Promise<OverloadResult> {
  const { api } = options;
  // A warm process, as an overload meets it in production: JIT-compiled paths, pools filled.
  await drive(api, options.requests, WARM_UP_CONNECTIONS, WARM_UP_SECONDS);
  const rssBeforeMb = api.rssMb();
  const heapBeforeMb = await heapUsedMb(api);
  let rssPeakMb = rssBeforeMb;
  const sampler = setInterval(() => (rssPeakMb = Math.max(rssPeakMb, api.rssMb())), 250);
  const latencies: number[] = [];
  const firstLatencies: number[] = [];
  let accepted = 0;
  let refused = 0;
  let failures = 0;
  try {
    const result = await new Promise<autocannon.Result>((resolve, reject) => {
      const instance = autocannon(
        {
          url: api.url,
          connections: options.connections,
          duration: options.durationSeconds,
          timeout: 10,
          requests: anyOf(options.requests),
        },
        (error, done) => (error ? reject(error as Error) : resolve(done)),
      );
      const connected = new Set<unknown>();
      instance.on('response', (client, status, _bytes, ms) => {
        // A connection's first request waited for the connection to be accepted too (1,000 at
        // once on 2 cores take seconds, a bare handler's as well): reported on its own.
        const first = !connected.has(client);
        if (first) {
          connected.add(client);
          firstLatencies.push(ms);
        }
        if (status === 200) {
          accepted += 1;
          if (!first) latencies.push(ms);
        } else if (status === 503) refused += 1;
        else failures += 1;
      });
    });
    failures += result.errors + result.timeouts;
  } finally {
    clearInterval(sampler);
  }
  // Memory should come back once the flood stops (nothing queued is left behind): measured after
  // a pause and the warm-up's light load again, which lets the collector run.
  await new Promise((resolve) => setTimeout(resolve, 2_000));
  await drive(api, options.requests, WARM_UP_CONNECTIONS, RECOVERY_SECONDS);
  const sorted = Float64Array.from(latencies).sort();
  return {
    firstRequestP99: percentile(Float64Array.from(firstLatencies).sort(), 0.99),
    acceptedPerSecond: accepted / options.durationSeconds,
    refusedPerSecond: refused / options.durationSeconds,
    acceptedP50: percentile(sorted, 0.5),
    acceptedP99: percentile(sorted, 0.99),
    failures,
    rssBeforeMb,
    rssPeakMb,
    rssAfterMb: api.rssMb(),
    heapBeforeMb,
    heapAfterMb: await heapUsedMb(api),
  };
}

export interface OverloadScenario {
  name: string;
  requests: BenchRequest[];
  normalConnections: number;
  overloadConnections: number;
}

export interface OverloadRow {
  scenario: OverloadScenario;
  normal: OverloadResult;
  overload: OverloadResult;
}

export async function runOverloadScenarios(
  db: BenchDatabase,
  scenarios: OverloadScenario[],
  durationSeconds: number,
  env: Record<string, string> = {},
): Promise<OverloadRow[]> {
  const rows: OverloadRow[] = [];
  for (const scenario of scenarios) {
    const measure = async (connections: number) => {
      const api = await startApi(db.url, env);
      try {
        return await measureOverload({
          api,
          requests: scenario.requests,
          connections,
          durationSeconds,
        });
      } finally {
        await api.stop();
      }
    };
    console.error(`bench: overload, ${scenario.name}`);
    const normal = await measure(scenario.normalConnections);
    const overload = await measure(scenario.overloadConnections);
    rows.push({ scenario, normal, overload });
  }
  return rows;
}

const fmt = (n: number, digits = 0) =>
  n.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits });

export function overloadTable(rows: OverloadRow[]): string {
  const lines = [
    '| scenario | connections | accepted/s | refused/s | accepted p50 ms | accepted p99 ms | first request p99 ms | accepted vs unloaded | RSS MB before / peak / after | after / before | RSS after vs unloaded after | heap MB before / after | failed |',
    '|---|---|---|---|---|---|---|---|---|---|---|---|---|',
  ];
  for (const { scenario, normal, overload } of rows) {
    for (const [connections, r] of [
      [scenario.normalConnections, normal],
      [scenario.overloadConnections, overload],
    ] as const) {
      const share = r === normal ? '1.00' : fmt(r.acceptedPerSecond / normal.acceptedPerSecond, 2);
      const rssShare = r === normal ? '1.00' : fmt(r.rssAfterMb / normal.rssAfterMb, 2);
      lines.push(
        `| ${scenario.name} | ${connections} | ${fmt(r.acceptedPerSecond)} | ${fmt(r.refusedPerSecond)} | ${fmt(r.acceptedP50)} | ${fmt(r.acceptedP99)} | ${fmt(r.firstRequestP99)} | ${share}x | ${fmt(r.rssBeforeMb)} / ${fmt(r.rssPeakMb)} / ${fmt(r.rssAfterMb)} | ${fmt(r.rssAfterMb / r.rssBeforeMb, 2)}x | ${rssShare}x | ${fmt(r.heapBeforeMb)} / ${fmt(r.heapAfterMb)} | ${r.failures} |`,
      );
    }
  }
  return `${lines.join('\n')}\n\naccepted p50/p99: requests after a connection's first (the first waited for the connection to be accepted)\nafter: RSS after 2 s of pause and 10 s of the warm-up's light load; its baseline is the unloaded run's after the same\ntargets at the overload count: accepted p99 < 1,000 ms, accepted >= 0.80x unloaded, RSS after back to the unloaded run's (within 1.10x)`;
}

/**
 * The three floods of issue 9, each beside its usual connection count. Every request sent is one
 * of many prepared ones picked at random (`anyOf`), so requests carry different users, as
 * gateways and readers do: 20,000 single heartbeats, or 50 bodies of 1,000 random users.
 */
export function overloadScenarios(rows: number): OverloadScenario[] {
  const users = (count: number) =>
    JSON.stringify(Array.from({ length: count }, () => ({ user_id: randomUserId(rows) })));
  const batchBodies = prepare(50, () => ({ method: 'POST', path: '', body: users(1000) }));
  const batchesTo = (path: string) => batchBodies.map((request) => ({ ...request, path }));
  return [
    {
      name: 'POST /status/update, single heartbeats',
      requests: prepare(20_000, () => ({
        method: 'POST',
        path: '/status/update',
        body: `{"user_id":${randomUserId(rows)}}`,
      })),
      normalConnections: 32,
      overloadConnections: 1000,
    },
    {
      name: 'POST /status/batch, 1,000 ids',
      requests: batchesTo('/status/batch'),
      normalConnections: 2,
      overloadConnections: 500,
    },
    {
      name: 'POST /status/update, gateway batches of 1,000',
      requests: batchesTo('/status/update'),
      normalConnections: 8,
      overloadConnections: 1000,
    },
  ];
}

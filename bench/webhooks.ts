/**
 * npm run bench:webhooks: the webhook deliverer (webhooks/main.ts, a real process with its default
 * settings) against a healthy receiver on this machine that verifies every signature with the
 * standardwebhooks package.
 *
 *   flock /tmp/pulse-bench.lock npm run bench:webhooks
 *   BENCH_LATENCY_RATE=1000 BENCH_LATENCY_SECONDS=30 BENCH_SUSTAINED_RATE=6000
 *   BENCH_SUSTAINED_SECONDS=20 BENCH_BACKLOG=200000 BENCH_OUTAGE_RATE=1000 BENCH_OUTAGE_SECONDS=60
 *
 * 1. latency: transitions committed at BENCH_LATENCY_RATE/s; from each commit (the INSERT's
 *    answer) to the receiver having the event, p50/p99/max.
 * 2. sustained: the same at BENCH_SUSTAINED_RATE/s: delivered per second and p99.
 * 3. capacity: BENCH_BACKLOG transitions logged while the endpoint is disabled, then enabled: how
 *    fast one endpoint's backlog is delivered.
 * 4. outage: the receiver answers 503 for BENCH_OUTAGE_SECONDS while transitions go on at
 *    BENCH_OUTAGE_RATE/s, then recovers. Reported: how long the deliverer's backoff waited after
 *    the recovery, how long the backlog took to drain from the first accepted request, and the
 *    ratio of the outage's length to that drain time (the backlog built up at the outage rate).
 * Writes bench/results/webhooks.json (BENCH_RESULTS: another file).
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { Webhook } from 'standardwebhooks';
import { freePort } from '../dev/embedded-postgres.ts';
import { openBenchDatabase, sleep, type BenchDatabase } from './support.ts';

const env = (name: string, fallback: number) => Number(process.env[name] ?? fallback);
const sizes = {
  latencyRate: env('BENCH_LATENCY_RATE', 1000),
  latencySeconds: env('BENCH_LATENCY_SECONDS', 30),
  sustainedRate: env('BENCH_SUSTAINED_RATE', 6000),
  sustainedSeconds: env('BENCH_SUSTAINED_SECONDS', 20),
  backlog: env('BENCH_BACKLOG', 200_000),
  outageRate: env('BENCH_OUTAGE_RATE', 1000),
  outageSeconds: env('BENCH_OUTAGE_SECONDS', 60),
};
const root = fileURLToPath(new URL('..', import.meta.url));
const secret = `whsec_${randomBytes(32).toString('base64')}`;
const forSeconds = (seconds: number) => {
  const end = Date.now() + seconds * 1000;
  return () => Date.now() >= end;
};
let nextUser = 1;

/** The receiver: verifies every request, records when each event first arrived. */
async function startReceiver() {
  const webhook = new Webhook(secret);
  const arrivedAt = new Map<string, number>();
  const stats = { requests: 0, accepted: 0, duplicates: 0, badSignatures: 0, refused: 0 };
  const seenIds = new Set<string>();
  let failing = false;
  let firstAcceptedAfter: number | undefined;
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      stats.requests += 1;
      const body = Buffer.concat(chunks).toString('utf8');
      let payload: { data: { events: Array<{ seq: string }> } };
      try {
        payload = webhook.verify(body, req.headers as Record<string, string>) as typeof payload;
      } catch {
        stats.badSignatures += 1;
        res.writeHead(400).end();
        return;
      }
      if (failing) {
        stats.refused += 1;
        res.writeHead(503).end();
        return;
      }
      const now = Date.now();
      firstAcceptedAfter ??= now;
      stats.accepted += 1;
      const id = String(req.headers['webhook-id']);
      if (seenIds.has(id)) stats.duplicates += 1;
      seenIds.add(id);
      for (const event of payload.data.events)
        if (!arrivedAt.has(event.seq)) arrivedAt.set(event.seq, now);
      res.writeHead(204).end();
    });
  });
  server.keepAliveTimeout = 30_000;
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/hooks`,
    arrivedAt,
    stats,
    fail(on: boolean) {
      failing = on;
      if (!on) firstAcceptedAfter = undefined;
    },
    firstAccepted: () => firstAcceptedAfter,
    close: () => new Promise((resolve) => server.close(resolve)),
  };
}

/** Transitions at `rate`/s until `done()`, one INSERT every 20 ms; each seq's commit time. */
async function produce(
  db: BenchDatabase,
  rate: number,
  done: () => boolean,
  committedAt: Map<string, number>,
): Promise<number> {
  const tickMs = 20;
  const started = Date.now();
  let due = 0;
  let produced = 0;
  const inFlight = new Set<Promise<void>>();
  while (!done()) {
    due += (rate * tickMs) / 1000;
    const count = Math.floor(due);
    due -= count;
    if (count > 0) {
      const first = nextUser;
      nextUser += count;
      const write = db
        .query<{ seq: string }>(
          `INSERT INTO pulse_events (user_id, online, reason)
           SELECT g, true, 'heartbeat' FROM generate_series($1::bigint, $2::bigint) g
           RETURNING seq::text AS seq`,
          [first, first + count - 1],
        )
        .then(({ rows }) => {
          const now = Date.now();
          for (const row of rows) committedAt.set(row.seq, now);
          produced += rows.length;
        });
      inFlight.add(write);
      void write.finally(() => inFlight.delete(write));
    }
    const next = started + Math.ceil((Date.now() - started + 1) / tickMs) * tickMs;
    await sleep(Math.max(0, next - Date.now()));
  }
  await Promise.all(inFlight);
  return produced;
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

async function waitUntil(what: string, check: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

function latencies(committedAt: Map<string, number>, arrivedAt: Map<string, number>) {
  const values: number[] = [];
  let missing = 0;
  for (const [seq, at] of committedAt) {
    const arrived = arrivedAt.get(seq);
    if (arrived === undefined) missing += 1;
    else values.push(arrived - at);
  }
  values.sort((a, b) => a - b);
  const round = (ms: number) => Math.round(ms);
  return {
    events: committedAt.size,
    missing,
    p50Ms: round(percentile(values, 50)),
    p99Ms: round(percentile(values, 99)),
    maxMs: round(values[values.length - 1] ?? NaN),
  };
}

async function main(): Promise<void> {
  const bench = await openBenchDatabase('pulse_bench_webhooks');
  const receiver = await startReceiver();
  const metricsPort = await freePort();
  const deliverer = spawn(process.execPath, ['--import', 'tsx', 'webhooks/main.ts'], {
    cwd: root,
    env: {
      PATH: process.env.PATH,
      DATABASE_URL: bench.url,
      LOG_LEVEL: 'warn',
      LOG_FORMAT: 'json',
      METRICS_PORT: String(metricsPort),
      WEBHOOKS_ALLOW_PRIVATE_TARGETS: 'true',
      WEBHOOKS_REFRESH_MS: '200',
    },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  const results: Record<string, unknown> = {};
  let stopProducing = false;
  let producing: Promise<number> | undefined;
  try {
    const { rows } = await bench.query<{ id: number }>(
      `INSERT INTO pulse_webhooks (name, url, secret) VALUES ('bench', $1, $2) RETURNING id`,
      [receiver.url, secret],
    );
    const endpointId = rows[0]!.id;
    const allDelivered = (committed: Map<string, number>) => () =>
      [...committed.keys()].every((seq) => receiver.arrivedAt.has(seq));

    // Warm-up (not counted): the deliverer is up and holds the endpoint's lease.
    const warmUp = new Map<string, number>();
    await produce(bench, 100, forSeconds(1), warmUp);
    await waitUntil('the warm-up delivered', allDelivered(warmUp), 60_000);

    // 1. Latency at a moderate rate.
    process.stdout.write(`latency: ${sizes.latencyRate}/s for ${sizes.latencySeconds} s\n`);
    const latency = new Map<string, number>();
    await produce(bench, sizes.latencyRate, forSeconds(sizes.latencySeconds), latency);
    await waitUntil('the latency phase delivered', allDelivered(latency), 60_000);
    results.latency = { rate: sizes.latencyRate, ...latencies(latency, receiver.arrivedAt) };

    // 2. Sustained high rate.
    process.stdout.write(`sustained: ${sizes.sustainedRate}/s for ${sizes.sustainedSeconds} s\n`);
    const sustained = new Map<string, number>();
    const sustainedStart = Date.now();
    await produce(bench, sizes.sustainedRate, forSeconds(sizes.sustainedSeconds), sustained);
    await waitUntil('the sustained phase delivered', allDelivered(sustained), 120_000);
    const lastArrival = Math.max(...[...sustained.keys()].map((s) => receiver.arrivedAt.get(s)!));
    results.sustained = {
      rate: sizes.sustainedRate,
      deliveredPerSecond: Math.round(sustained.size / ((lastArrival - sustainedStart) / 1000)),
      ...latencies(sustained, receiver.arrivedAt),
    };

    // 3. Capacity: one endpoint's backlog delivered as fast as it goes.
    process.stdout.write(`capacity: a backlog of ${sizes.backlog}\n`);
    await bench.query('UPDATE pulse_webhooks SET enabled = false WHERE id = $1', [endpointId]);
    await sleep(1000);
    const backlog = new Map<string, number>();
    await produce(bench, sizes.backlog * 5, forSeconds(0.2), backlog);
    const capacityStart = Date.now();
    await bench.query('UPDATE pulse_webhooks SET enabled = true WHERE id = $1', [endpointId]);
    await waitUntil('the backlog delivered', allDelivered(backlog), 600_000);
    const capacitySeconds = (Date.now() - capacityStart) / 1000;
    results.capacity = {
      events: backlog.size,
      seconds: Math.round(capacitySeconds * 10) / 10,
      deliveredPerSecond: Math.round(backlog.size / capacitySeconds),
    };

    // 4. A receiver outage, then the drain.
    process.stdout.write(`outage: ${sizes.outageSeconds} s at ${sizes.outageRate}/s\n`);
    const outage = new Map<string, number>();
    receiver.fail(true);
    await produce(bench, sizes.outageRate, forSeconds(sizes.outageSeconds), outage);
    const backlogAtRecovery = [...outage.keys()].filter((s) => !receiver.arrivedAt.has(s)).length;
    receiver.fail(false);
    const recoveredAt = Date.now();
    const during = new Map<string, number>();
    stopProducing = false;
    producing = produce(bench, sizes.outageRate, () => stopProducing, during);
    await waitUntil(
      'a first accepted request',
      () => receiver.firstAccepted() !== undefined,
      900_000,
    );
    const firstAccepted = receiver.firstAccepted()!;
    await waitUntil('the outage backlog delivered', allDelivered(outage), 600_000);
    // A loop, not Math.max(...): a 10-minute outage leaves 600,000 arguments, past the stack.
    let drainedAt = 0;
    for (const seq of outage.keys()) drainedAt = Math.max(drainedAt, receiver.arrivedAt.get(seq)!);
    const stopAt = Date.now();
    stopProducing = true;
    await producing;
    const drainSeconds = (drainedAt - firstAccepted) / 1000;
    results.outage = {
      rate: sizes.outageRate,
      outageSeconds: sizes.outageSeconds,
      backlogAtRecovery,
      backoffWaitAfterRecoverySeconds: Math.round((firstAccepted - recoveredAt) / 100) / 10,
      drainSeconds: Math.round(drainSeconds * 100) / 100,
      drainedPerSecond: Math.round(backlogAtRecovery / drainSeconds),
      drainVsBuildUp: Math.round((sizes.outageSeconds / drainSeconds) * 10) / 10,
      stoppedProducerAfterSeconds: Math.round((stopAt - recoveredAt) / 1000),
    };
    results.receiver = { ...receiver.stats };
  } finally {
    // A producer still running would write to the pool closed below.
    stopProducing = true;
    await producing?.catch(() => undefined);
    deliverer.kill('SIGTERM');
    await once(deliverer, 'exit');
    await receiver.close();
    await bench.close();
  }
  const report = {
    measuredAt: new Date().toISOString(),
    machine: `${os.cpus().length} x ${os.cpus()[0]?.model.split(' ').slice(0, 2).join(' ')}`,
    postgres: process.env.DATABASE_URL ? 'DATABASE_URL' : 'embedded',
    deliverer:
      'webhooks/main.ts, default settings (batch 1000 events, wait 200 ms, backoff 1 s to 60 s)',
    sizes,
    ...results,
  };
  writeFileSync(
    process.env.BENCH_RESULTS ?? new URL('results/webhooks.json', import.meta.url),
    `${JSON.stringify(report, null, 2)}\n`,
  );
  process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
  process.exit(0);
}

await main();

/**
 * Option B, measured beside Option A: the same heartbeat and batch-read workloads against Redis,
 * presence as keys with a TTL (`SET pulse:<id> <ms> EX 30`, `MGET` of 1,000 keys), expiry doing
 * the sweeper's job. A benchmark only, not a storage backend: what Pulse would pay and lose.
 *
 * Redis counts its own CPU time (INFO cpu), so the cost per heartbeat is Redis CPU over heartbeats,
 * the counterpart of PostgreSQL backend CPU over heartbeats in bench/scale.ts.
 */
import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';

export interface OptionBResult {
  redisVersion: string;
  /** What a crash or restart of this Redis loses: read from its configuration. */
  persistence: { appendonly: string; appendfsync: string; save: string };
  keyFormat: string;
  keys: number;
  memory: { bytesPerKey: number; usedMemoryDeltaBytes: number; memoryUsageOfOneKey: number };
  singleHeartbeats: RedisWorkload;
  gatewayBatches: RedisWorkload & { keysPerPipeline: number };
  batchRead: RedisWorkload & { idsPerRequest: number; p50Ms: number; p99Ms: number };
  expiry: { keys: number; expired: number; seconds: number; cpuUsPerExpiredKey: number };
}

export interface RedisWorkload {
  concurrency: number;
  operationsPerSecond: number;
  /** Redis CPU (user + system) per heartbeat, or per read request for batchRead. */
  cpuUsPerOperation: number;
}

async function info(redis: Redis, section: string): Promise<Record<string, string>> {
  const text = await redis.info(section);
  return Object.fromEntries(
    text
      .split('\r\n')
      .filter((line) => line.includes(':') && !line.startsWith('#'))
      .map((line) => [line.slice(0, line.indexOf(':')), line.slice(line.indexOf(':') + 1)]),
  );
}

async function redisCpuSeconds(redis: Redis): Promise<number> {
  const cpu = await info(redis, 'cpu');
  return Number(cpu.used_cpu_user) + Number(cpu.used_cpu_sys);
}

async function configValue(redis: Redis, name: string): Promise<string> {
  try {
    const reply = await redis.config('GET', name);
    return reply[1] ?? 'unknown';
  } catch {
    return 'unknown (CONFIG is disabled)';
  }
}

const percentile = (sorted: number[], q: number) =>
  sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? NaN;
const round = (n: number, digits = 2) => Math.round(n * 10 ** digits) / 10 ** digits;

/**
 * Runs `concurrency` closed loops of `operation` for `seconds`; returns operations done, Redis
 * CPU seconds spent meanwhile, and each operation's latency in ms.
 */
async function drive(
  redis: Redis,
  concurrency: number,
  seconds: number,
  operation: (worker: number) => Promise<unknown>,
) {
  const cpuBefore = await redisCpuSeconds(redis);
  const started = performance.now();
  const until = started + seconds * 1000;
  const latencies: number[] = [];
  await Promise.all(
    Array.from({ length: concurrency }, async (_, worker) => {
      while (performance.now() < until) {
        const t = performance.now();
        await operation(worker);
        latencies.push(performance.now() - t);
      }
    }),
  );
  const elapsed = (performance.now() - started) / 1000;
  const cpu = (await redisCpuSeconds(redis)) - cpuBefore;
  return { operations: latencies.length, elapsed, cpu, latencies };
}

export async function measureOptionB(options: {
  url: string;
  keys: number;
  seconds: number;
  log: (message: string) => void;
}): Promise<OptionBResult> {
  const { keys, seconds, log } = options;
  // A run tag keeps this run's keys apart from anything else in the same Redis.
  const tag = randomBytes(2).toString('hex');
  const key = (id: number) => `pulse${tag}:${id}`;
  const randomId = () => 1 + Math.floor(Math.random() * keys);
  const connections = Array.from(
    { length: 4 },
    () => new Redis(options.url, { lazyConnect: true, maxRetriesPerRequest: 1 }),
  );
  const admin = connections[0]!;
  try {
    await Promise.all(connections.map((c) => c.connect()));
    const server = await info(admin, 'server');
    const persistence = {
      appendonly: await configValue(admin, 'appendonly'),
      appendfsync: await configValue(admin, 'appendfsync'),
      save: await configValue(admin, 'save'),
    };

    log(`Option B: loading ${keys} keys into Redis`);
    const memoryBefore = Number((await info(admin, 'memory')).used_memory);
    for (let from = 1; from <= keys; from += 1000) {
      const pipeline = admin.pipeline();
      for (let id = from; id < Math.min(keys + 1, from + 1000); id += 1) {
        pipeline.set(key(id), String(Date.now()), 'EX', 600);
      }
      await pipeline.exec();
    }
    const memoryAfter = Number((await info(admin, 'memory')).used_memory);
    const memoryUsageOfOneKey = Number(await admin.memory('USAGE', key(1)));

    log(`Option B: single heartbeats (one SET ... EX per heartbeat), ${seconds} s`);
    const singles = await drive(admin, 32, seconds, (worker) =>
      connections[worker % connections.length]!.set(key(randomId()), String(Date.now()), 'EX', 30),
    );
    log(`Option B: gateway batches (a pipeline of 1,000 SET ... EX), ${seconds} s`);
    const gateway = await drive(admin, 8, seconds, (worker) => {
      const pipeline = connections[worker % connections.length]!.pipeline();
      for (let i = 0; i < 1000; i += 1) pipeline.set(key(randomId()), String(Date.now()), 'EX', 30);
      return pipeline.exec();
    });
    log(`Option B: MGET of 1,000 keys, ${seconds} s`);
    const reads = await drive(admin, 2, seconds, (worker) =>
      connections[worker]!.mget(Array.from({ length: 1000 }, () => key(randomId()))),
    );
    const sortedReads = [...reads.latencies].sort((a, b) => a - b);

    // Expiry is Option B's sweeper: keys that stop getting heartbeats vanish by their TTL. The
    // keys are written without a TTL, then armed with PEXPIRE; the CPU counted from there on
    // includes arming them (an upper bound for the expiry itself).
    const expiring = Math.min(keys, 100_000);
    log(`Option B: ${expiring} keys expiring by their TTL (at most 60 s)`);
    for (let from = 1; from <= expiring; from += 1000) {
      const pipeline = admin.pipeline();
      for (let id = from; id < Math.min(expiring + 1, from + 1000); id += 1) {
        pipeline.set(`${key(id)}:x`, '1');
      }
      await pipeline.exec();
    }
    const expiredBefore = Number((await info(admin, 'stats')).expired_keys);
    const cpuBefore = await redisCpuSeconds(admin);
    const expiryStarted = performance.now();
    for (let from = 1; from <= expiring; from += 1000) {
      const pipeline = admin.pipeline();
      for (let id = from; id < Math.min(expiring + 1, from + 1000); id += 1) {
        pipeline.pexpire(`${key(id)}:x`, 1);
      }
      await pipeline.exec();
    }
    let expired = 0;
    while (expired < expiring && performance.now() - expiryStarted < 60_000) {
      await new Promise((resolve) => setTimeout(resolve, 250));
      expired = Number((await info(admin, 'stats')).expired_keys) - expiredBefore;
    }
    const expiryCpu = (await redisCpuSeconds(admin)) - cpuBefore;

    return {
      redisVersion: server.redis_version ?? 'unknown',
      persistence,
      keyFormat: `pulse${tag}:<user_id> = <unix ms> (${key(keys).length} bytes of key at the largest id)`,
      keys,
      memory: {
        bytesPerKey: round((memoryAfter - memoryBefore) / keys, 1),
        usedMemoryDeltaBytes: memoryAfter - memoryBefore,
        memoryUsageOfOneKey,
      },
      singleHeartbeats: {
        concurrency: 32,
        operationsPerSecond: Math.round(singles.operations / singles.elapsed),
        cpuUsPerOperation: round((singles.cpu * 1e6) / singles.operations),
      },
      gatewayBatches: {
        concurrency: 8,
        keysPerPipeline: 1000,
        operationsPerSecond: Math.round((gateway.operations * 1000) / gateway.elapsed),
        cpuUsPerOperation: round((gateway.cpu * 1e6) / (gateway.operations * 1000)),
      },
      batchRead: {
        concurrency: 2,
        idsPerRequest: 1000,
        operationsPerSecond: Math.round(reads.operations / reads.elapsed),
        cpuUsPerOperation: round((reads.cpu * 1e6) / reads.operations),
        p50Ms: round(percentile(sortedReads, 0.5)),
        p99Ms: round(percentile(sortedReads, 0.99)),
      },
      expiry: {
        keys: expiring,
        expired,
        seconds: round((performance.now() - expiryStarted) / 1000, 1),
        cpuUsPerExpiredKey: round((expiryCpu * 1e6) / Math.max(1, expired)),
      },
    };
  } finally {
    log('Option B: removing the benchmark keys');
    for (let from = 1; from <= keys; from += 1000) {
      const ids = Array.from({ length: Math.min(1000, keys + 1 - from) }, (_, i) => from + i);
      await admin.unlink(...ids.map(key), ...ids.map((id) => `${key(id)}:x`)).catch(() => 0);
    }
    connections.forEach((c) => c.disconnect());
  }
}

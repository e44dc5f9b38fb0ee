/**
 * npm run bench:heartbeat-log: what the change log costs the heartbeat path, before and after, in
 * one run: the database CPU per heartbeat of the upsert Pulse ran before the log (no
 * online_since, no event CTE) and of today's (lib/store/pulse-store.ts recordHeartbeats), on the
 * same table, in alternating rounds on one connection each.
 *
 *   flock /tmp/pulse-bench.lock npm run bench:heartbeat-log
 *   BENCH_USERS=1000000 BENCH_BATCH=50 BENCH_ROUND_SECONDS=5 BENCH_ROUNDS=7 BENCH_COMING_ONLINE=0.01
 *
 * Batches of BENCH_BATCH random users (a group-commit flush under load), synchronous commit. In each
 * batch a BENCH_COMING_ONLINE share of the users comes online (their mark is cleared beforehand,
 * outside the measured connection), so the new upsert also writes its events. Database CPU: the
 * backend's CPU time from /proc (the server must run on this machine), plus autovacuum.
 */
import { writeFileSync } from 'node:fs';
import os from 'node:os';
import { measureLogPrice } from './change-log-price.ts';
import { fillTable, openBenchDatabase } from './support.ts';

const users = Number(process.env.BENCH_USERS ?? 1_000_000);
const batch = Number(process.env.BENCH_BATCH ?? 50);
const roundSeconds = Number(process.env.BENCH_ROUND_SECONDS ?? 5);
const rounds = Number(process.env.BENCH_ROUNDS ?? 7);
const comingOnline = Number(process.env.BENCH_COMING_ONLINE ?? 0.01);

async function main(): Promise<void> {
  const bench = await openBenchDatabase('pulse_bench_heartbeat_log');
  let price;
  try {
    await fillTable(bench, users, 0);
    price = await measureLogPrice(bench, {
      randomUserId: () => 1 + Math.floor(Math.random() * users),
      batch,
      roundSeconds,
      rounds,
      comingOnline,
    });
  } finally {
    await bench.close();
  }
  const results = price.dbCpuUsPerHeartbeat;
  const { before, after } = price.median;
  writeFileSync(
    process.env.BENCH_RESULTS ?? new URL('./results/heartbeat-log.json', import.meta.url),
    `${JSON.stringify(
      {
        measuredAt: new Date().toISOString(),
        machine: `${os.cpus().length} x ${os.cpus()[0]?.model ?? 'CPU'}`,
        postgres: process.env.DATABASE_URL ? 'DATABASE_URL' : 'embedded',
        sizes: { users, batch, roundSeconds, rounds, comingOnline },
        dbCpuUsPerHeartbeat: { before: results.before, after: results.after },
        median: { before, after, ratio: after / before },
      },
      null,
      2,
    )}\n`,
  );
  console.log(`
Heartbeat database CPU before and after the change log (${os.cpus().length} x ${os.cpus()[0]?.model ?? 'CPU'}, PostgreSQL: ${process.env.DATABASE_URL ? 'DATABASE_URL' : 'embedded'})
${users.toLocaleString('en-US')} users, batches of ${batch}, ${comingOnline * 100}% of each batch coming online, ${rounds} alternating rounds of ${roundSeconds} s

| upsert | database CPU per heartbeat (rounds) | median |
|---|---|---|
| before (no log) | ${results.before.map((v) => v.toFixed(1)).join(', ')} us | ${before.toFixed(1)} us |
| after (online_since + event CTE) | ${results.after.map((v) => v.toFixed(1)).join(', ')} us | ${after.toFixed(1)} us |
| ratio after / before | | x${(after / before).toFixed(3)} (target <= 1.15) |
`);
}

await main();

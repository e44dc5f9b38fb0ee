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
import { CompiledQuery } from 'kysely';
import { openDatabase } from '../lib/infra/db.ts';
import { createLogger } from '../lib/infra/logger.ts';
import { recordHeartbeats } from '../lib/store/pulse-store.ts';
import { watchBackends } from './process-cpu.ts';
import { fillTable, openBenchDatabase } from './support.ts';

const users = Number(process.env.BENCH_USERS ?? 1_000_000);
const batch = Number(process.env.BENCH_BATCH ?? 50);
const roundSeconds = Number(process.env.BENCH_ROUND_SECONDS ?? 5);
const rounds = Number(process.env.BENCH_ROUNDS ?? 7);
const comingOnline = Number(process.env.BENCH_COMING_ONLINE ?? 0.01);

const OLD_UPSERT = `INSERT INTO pulse (user_id, last_hb) SELECT hb, now() FROM unnest($1::bigint[]) AS hb
  ON CONFLICT (user_id) DO UPDATE SET last_hb = EXCLUDED.last_hb`;

const randomIds = () => {
  const ids = new Set<number>();
  while (ids.size < batch) ids.add(1 + Math.floor(Math.random() * users));
  return [...ids];
};

async function main(): Promise<void> {
  const bench = await openBenchDatabase('pulse_bench_heartbeat_log');
  const logger = createLogger('pulse-bench', 'warn');
  const open = (name: string) =>
    openDatabase({ connectionString: bench.url, poolMax: 1, applicationName: name, logger });
  const variants = { before: open('pulse-hb-before'), after: open('pulse-hb-after') };
  const results = { before: [] as number[], after: [] as number[] };
  try {
    await fillTable(bench, users, 0);
    await bench.query('UPDATE pulse SET online_since = last_hb');
    await bench.query('VACUUM ANALYZE pulse');
    for (let round = 0; round < rounds; round += 1) {
      for (const name of ['before', 'after'] as const) {
        const watch = watchBackends(bench, `pulse-hb-${name}`);
        const { db } = variants[name];
        await watch.start();
        const until = Date.now() + roundSeconds * 1000;
        let heartbeats = 0;
        while (Date.now() < until) {
          const ids = randomIds();
          // On average a BENCH_COMING_ONLINE share of the heartbeats, whole users per batch.
          const back = ids.slice(0, Math.floor(ids.length * comingOnline + Math.random()));
          if (back.length > 0) {
            await bench.query(
              'UPDATE pulse SET online_since = NULL WHERE user_id = ANY($1::bigint[])',
              [back],
            );
          }
          if (name === 'before') await db.executeQuery(CompiledQuery.raw(OLD_UPSERT, [ids]));
          else await recordHeartbeats(db, ids);
          heartbeats += ids.length;
        }
        const cpu = await watch.stop();
        if (!cpu.local) throw new Error('database CPU needs the PostgreSQL server on this machine');
        results[name].push(((cpu.backendsSeconds + cpu.autovacuumSeconds) * 1e6) / heartbeats);
      }
    }
  } finally {
    await variants.before.close();
    await variants.after.close();
    await bench.close();
  }
  // The median round: this machine is shared, and one disturbed round should not decide.
  const median = (values: number[]) => {
    const sorted = [...values].sort((a, b) => a - b);
    return sorted[Math.floor(sorted.length / 2)]!;
  };
  const before = median(results.before);
  const after = median(results.after);
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

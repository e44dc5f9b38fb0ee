/**
 * npm run bench:overload: the overload scenarios (bench/overload.ts) and the hostile clients
 * beside legitimate heartbeats (bench/overload-attacks.ts), on a smaller table.
 *
 *   BENCH_ROWS=100000 BENCH_DURATION_SECONDS=10 npm run bench:overload
 *   BENCH_OVERLOAD_PARTS=attacks npm run bench:overload     (only the attacks; or floods)
 */
import { fillTable, openBenchDatabase } from './support.ts';
import { attackScenarios, attackTable, runAttacks } from './overload-attacks.ts';
import { overloadScenarios, overloadTable, runOverloadScenarios } from './overload.ts';

const rows = Number(process.env.BENCH_ROWS ?? 100_000);
const durationSeconds = Number(process.env.BENCH_DURATION_SECONDS ?? 10);
const parts = (process.env.BENCH_OVERLOAD_PARTS ?? 'floods,attacks').split(',');

const db = await openBenchDatabase('pulse_bench_overload');
try {
  await fillTable(db, rows);
  const floods = parts.includes('floods')
    ? await runOverloadScenarios(db, overloadScenarios(rows), durationSeconds)
    : undefined;
  const attacks = parts.includes('attacks')
    ? await runAttacks(db, rows, attackScenarios(rows), durationSeconds)
    : undefined;
  console.log(`\nPulse overload benchmark: ${rows} rows, ${durationSeconds} s per run\n`);
  if (floods) console.log(overloadTable(floods));
  if (attacks)
    console.log(`\nHostile clients beside legitimate heartbeats\n\n${attackTable(attacks)}`);
} finally {
  await db.close();
}

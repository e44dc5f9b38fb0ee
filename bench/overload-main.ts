/**
 * npm run bench:overload: only the overload scenarios (bench/overload.ts), on a smaller table.
 *
 *   BENCH_ROWS=100000 BENCH_DURATION_SECONDS=10 npm run bench:overload
 */
import { fillTable, openBenchDatabase } from './support.ts';
import { overloadScenarios, overloadTable, runOverloadScenarios } from './overload.ts';

const rows = Number(process.env.BENCH_ROWS ?? 100_000);
const durationSeconds = Number(process.env.BENCH_DURATION_SECONDS ?? 10);

const db = await openBenchDatabase('pulse_bench_overload');
try {
  await fillTable(db, rows);
  const results = await runOverloadScenarios(db, overloadScenarios(rows), durationSeconds);
  console.log(`\nPulse overload benchmark: ${rows} rows, ${durationSeconds} s per run\n`);
  console.log(overloadTable(results));
} finally {
  await db.close();
}

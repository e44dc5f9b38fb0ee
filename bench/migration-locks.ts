/**
 * The locks Pulse's presence-lifecycle migrations (0003, 0004) take on a populated `pulse`, and
 * how long: each migration's up() and down() runs in its own transaction on a table of
 * `--rows` rows (1,000,000 by default) while single heartbeats keep flowing; before COMMIT the
 * transaction lists the locks it holds on `pulse` (held until COMMIT, so the transaction's
 * duration is the longest any of them is held).
 *
 *   flock /tmp/pulse-bench.lock npm run bench:migration-locks [-- --rows 1000000]
 */
import { parseArgs } from 'node:util';
import { sql, type Kysely } from 'kysely';
import { openDatabase } from '../lib/infra/db.ts';
import { createLogger } from '../lib/infra/logger.ts';
import { recordHeartbeats } from '../lib/store/pulse-store.ts';
import * as settings from '../migrations/0003_presence_settings.ts';
import * as lastSeen from '../migrations/0004_last_seen.ts';
import { fillTable, openBenchDatabase } from './support.ts';

const { values } = parseArgs({ options: { rows: { type: 'string', default: '1000000' } } });
const rows = Number(values.rows);
const scratch = await openBenchDatabase(`pulse_bench_migration_locks_${process.pid}`);
const logger = createLogger('pulse-bench', 'silent');
const migrating = openDatabase({
  connectionString: scratch.url,
  poolMax: 1,
  applicationName: 'bench-migrate',
  logger,
});
const heartbeats = openDatabase({
  connectionString: scratch.url,
  poolMax: 4,
  applicationName: 'bench-heartbeats',
  logger,
});

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- migrations take Kysely<any>
type Step = (db: Kysely<any>) => Promise<void>;

async function measure(name: string, step: Step) {
  const latencies: number[] = [];
  let running = true;
  const load = (async () => {
    while (running) {
      const id = 1 + Math.floor(Math.random() * rows);
      const started = performance.now();
      await recordHeartbeats(heartbeats.db, [id]);
      latencies.push(performance.now() - started);
    }
  })();
  await new Promise((resolve) => setTimeout(resolve, 300));
  const started = performance.now();
  const locks = await migrating.db.transaction().execute(async (trx) => {
    await step(trx);
    const held = await sql<{ mode: string }>`
      SELECT mode FROM pg_locks
      WHERE pid = pg_backend_pid() AND relation = to_regclass('pulse')`.execute(trx);
    return held.rows.map((r) => r.mode);
  });
  const ms = performance.now() - started;
  await new Promise((resolve) => setTimeout(resolve, 300));
  running = false;
  await load;
  const sorted = latencies.sort((a, b) => a - b);
  const round = (n: number | undefined) => Math.round((n ?? NaN) * 10) / 10;
  console.log(
    `${name}: transaction ${round(ms)} ms; locks on pulse: ${[...new Set(locks)].join(', ') || 'none'}; ` +
      `heartbeats meanwhile: ${sorted.length}, p99 ${round(sorted[Math.floor(sorted.length * 0.99)])} ms, max ${round(sorted.at(-1))} ms`,
  );
}

try {
  console.log(`filling pulse with ${rows} rows`);
  await fillTable(scratch, rows);
  await measure('0004_last_seen down', lastSeen.down);
  await measure('0003_presence_settings down', settings.down);
  await measure('0003_presence_settings up', settings.up);
  await measure('0004_last_seen up', lastSeen.up);
} finally {
  await migrating.close();
  await heartbeats.close();
  await scratch.close();
}

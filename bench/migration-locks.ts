/**
 * The locks Pulse's migrations that touch a populated `pulse` take (0003, 0004, 0012, 0015), and how
 * long: each migration's up() and down() runs in its own transaction on a table of `--rows` rows
 * (1,000,000 by default) while single heartbeats keep flowing; before COMMIT the transaction lists
 * the locks it holds on `pulse` (held until COMMIT, so the transaction's duration is the longest
 * any of them is held). One user in 100 is on two devices, as the schema on either side of 0015 keeps them.
 * Written to bench/results/migration-locks.json.
 *
 *   flock /tmp/pulse-bench.lock npm run bench:migration-locks [-- --rows 10000000]
 */
import { writeFileSync } from 'node:fs';
import os from 'node:os';
import { parseArgs } from 'node:util';
import { CompiledQuery, sql, type Kysely } from 'kysely';
import { openDatabase } from '../lib/infra/db.ts';
import { createLogger } from '../lib/infra/logger.ts';
import { recordHeartbeats } from '../lib/store/pulse-store.ts';
import * as settings from '../migrations/0003_presence_settings.ts';
import * as lastSeen from '../migrations/0004_last_seen.ts';
import * as devices from '../migrations/0012_devices.ts';
import * as devicesInRow from '../migrations/0015_devices_in_pulse_row.ts';
import { fillTable, HEARTBEAT_BEFORE_DEVICES, openBenchDatabase } from './support.ts';

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

const results: Array<Record<string, unknown>> = [];

/** `beforeDevices`: the load runs the heartbeat of before devices (valid while 0015 is undone). */
async function measure(name: string, step: Step, beforeDevices = false) {
  const latencies: number[] = [];
  let running = true;
  const load = (async () => {
    while (running) {
      const id = 1 + Math.floor(Math.random() * rows);
      const started = performance.now();
      if (beforeDevices) {
        await heartbeats.db.executeQuery(CompiledQuery.raw(HEARTBEAT_BEFORE_DEVICES, [[id], []]));
      } else {
        await recordHeartbeats(heartbeats.db, [id]);
      }
      latencies.push(performance.now() - started);
    }
  })();
  await new Promise((resolve) => setTimeout(resolve, 300));
  const started = performance.now();
  let locks: string[];
  try {
    locks = await migrating.db.transaction().execute(async (trx) => {
      await step(trx);
      const held = await sql<{ mode: string }>`
        SELECT mode FROM pg_locks
        WHERE pid = pg_backend_pid() AND relation = to_regclass('pulse')`.execute(trx);
      return held.rows.map((r) => r.mode);
    });
  } catch (error) {
    running = false;
    await load;
    throw new Error(`${name} failed`, { cause: error });
  }
  const ms = performance.now() - started;
  await new Promise((resolve) => setTimeout(resolve, 300));
  running = false;
  await load;
  const sorted = latencies.sort((a, b) => a - b);
  const round = (n: number | undefined) => Math.round((n ?? NaN) * 10) / 10;
  const held = [...new Set(locks)];
  results.push({
    step: name,
    transactionMs: round(ms),
    locksOnPulse: held,
    heartbeatsMeanwhile: sorted.length,
    heartbeatP99Ms: round(sorted[Math.floor(sorted.length * 0.99)]),
    heartbeatMaxMs: round(sorted.at(-1)),
  });
  console.log(
    `${name}: transaction ${round(ms)} ms; locks on pulse: ${held.join(', ') || 'none'}; ` +
      `heartbeats meanwhile: ${sorted.length}, p99 ${round(sorted[Math.floor(sorted.length * 0.99)])} ms, max ${round(sorted.at(-1))} ms`,
  );
}

try {
  console.log(`filling pulse with ${rows} rows`);
  await fillTable(scratch, rows);
  await scratch.query(`UPDATE pulse SET device_key = 1, devices = ARRAY[
      ROW(1, 'web', now()), ROW(2, 'mobile', now())]::pulse_device[]
    WHERE user_id % 100 = 0`);
  await scratch.query('VACUUM ANALYZE pulse');
  await measure('0015_devices_in_pulse_row down', devicesInRow.down, true);
  await measure('0012_devices down', devices.down, true);
  await measure('0012_devices up', devices.up, true);
  // Users on two devices as 0012 kept them: device_key NULL, a pulse_devices row per device.
  await scratch.query(`UPDATE pulse SET device_key = NULL WHERE user_id % 100 = 0`);
  await scratch.query(`INSERT INTO pulse_devices (user_id, device_key, last_hb, device_kind)
    SELECT user_id, k, now(), 'web' FROM pulse, (VALUES (1), (2)) AS d(k)
    WHERE user_id % 100 = 0`);
  await scratch.query('VACUUM ANALYZE pulse');
  await scratch.query('VACUUM ANALYZE pulse_devices');
  await measure('0015_devices_in_pulse_row up', devicesInRow.up, true);
  await measure('0004_last_seen down', lastSeen.down);
  await measure('0003_presence_settings down', settings.down);
  await measure('0003_presence_settings up', settings.up);
  await measure('0004_last_seen up', lastSeen.up);
  writeFileSync(
    process.env.BENCH_RESULTS ?? new URL('./results/migration-locks.json', import.meta.url),
    `${JSON.stringify(
      {
        measuredAt: new Date().toISOString(),
        machine: `${os.cpus().length} x ${os.cpus()[0]?.model ?? 'CPU'}`,
        postgres: process.env.DATABASE_URL ? 'DATABASE_URL' : 'embedded',
        rows,
        steps: results,
      },
      null,
      2,
    )}\n`,
  );
} finally {
  await migrating.close();
  await heartbeats.close();
  await scratch.close();
}

/**
 * npm run bench:devices: what devices (issue 22) cost the heartbeat path and the table, in one run.
 *
 * Database CPU per heartbeat, in alternating rounds on one connection each, batches of
 * BENCH_BATCH random users (a group-commit flush under load):
 * - today: the upsert Pulse ran before devices (no device columns touched), on users with no
 *   device, unnamed as Pulse ran it then (todayNamed: the same run by name, for comparison);
 * - none: today's recordHeartbeats naming no device, on the same users;
 * - one: recordHeartbeats with a device id per user (each user on one device, as the client sends);
 * - two: users on two devices at once (both fresh: the bench database's threshold is an hour, so
 *   no device goes stale in the run), each beat from one of their two devices.
 * Database CPU: the backend's CPU time from /proc (the server must run on this machine), plus
 * autovacuum, the median round. A user on two devices beats twice as often as one on one device:
 * the per-user figure is twice the per-heartbeat one.
 *
 * Bytes per online user: pulse as it was (user_id, last_hb, online_since), as it is with one
 * device per user, and as it is for users on two devices (the row's `devices` array of two),
 * BENCH_SIZE_ROWS rows each, pg_total_relation_size per row.
 *
 *   flock /tmp/pulse-bench.lock npm run bench:devices
 *   BENCH_USERS=300000 BENCH_BATCH=200 BENCH_ROUND_SECONDS=4 BENCH_ROUNDS=7 BENCH_SIZE_ROWS=1000000
 */
import { writeFileSync } from 'node:fs';
import os from 'node:os';
import { CompiledQuery } from 'kysely';
import { openDatabase } from '../lib/infra/db.ts';
import { createLogger } from '../lib/infra/logger.ts';
import { preparedStatement } from '../lib/infra/prepared-statements.ts';
import { recordHeartbeats, type DeviceKind } from '../lib/store/pulse-store.ts';
import { watchBackends } from './process-cpu.ts';
import { HEARTBEAT_BEFORE_DEVICES, openBenchDatabase } from './support.ts';

const users = Number(process.env.BENCH_USERS ?? 300_000);
const batch = Number(process.env.BENCH_BATCH ?? 200);
const roundSeconds = Number(process.env.BENCH_ROUND_SECONDS ?? 4);
const rounds = Number(process.env.BENCH_ROUNDS ?? 7);
const sizeRows = Number(process.env.BENCH_SIZE_ROWS ?? 1_000_000);

/** The same text with a comment (its own name), run as a named statement. */
const TODAY_UPSERT_NAMED = preparedStatement(`${HEARTBEAT_BEFORE_DEVICES} -- named`);

const VARIANTS = ['today', 'todayNamed', 'none', 'one', 'two'] as const;
type Variant = (typeof VARIANTS)[number];

/** Users of each variant: none and today share the first range; one and two have their own. */
const rangeOf = (variant: Variant) => (variant === 'one' ? 1 : variant === 'two' ? 2 : 0);
/** A device id as the client library makes them (b- and 16 base-36 characters). */
const deviceOf = (userId: number, which: 'a' | 'b' = 'a') =>
  `b-${which}${userId.toString(36).padStart(15, '0')}`;

function randomIds(range: number): number[] {
  const ids = new Set<number>();
  while (ids.size < batch) ids.add(range * users + 1 + Math.floor(Math.random() * users));
  return [...ids];
}

const median = (values: number[]) =>
  [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;

async function main(): Promise<void> {
  const bench = await openBenchDatabase('pulse_bench_devices');
  const logger = createLogger('pulse-bench', 'warn');
  const open = (name: string) =>
    openDatabase({ connectionString: bench.url, poolMax: 1, applicationName: name, logger });
  const connections = Object.fromEntries(
    VARIANTS.map((v) => [v, open(`pulse-dev-${v}`)]),
  ) as Record<Variant, ReturnType<typeof open>>;
  const results = Object.fromEntries(VARIANTS.map((v) => [v, [] as number[]])) as Record<
    Variant,
    number[]
  >;
  let sizes: Record<string, number> = {};
  try {
    // Every device stays fresh for the whole run (the default 20 s would let the two-device users'
    // other device go stale between their beats, and their beats become one-device ones).
    await bench.query('UPDATE pulse_settings SET online_threshold_seconds = 3600 WHERE id = 1');
    console.log(`filling ${(3 * users).toLocaleString('en-US')} users`);
    const { db } = connections.none;
    const chunk = 10_000;
    for (let range = 0; range < 3; range += 1) {
      for (let from = range * users + 1; from <= (range + 1) * users; from += chunk) {
        const ids = Array.from(
          { length: Math.min(chunk, (range + 1) * users - from + 1) },
          (_, i) => from + i,
        );
        const kinds = ids.map((): DeviceKind => 'web');
        if (range === 0) await recordHeartbeats(db, ids);
        else
          await recordHeartbeats(db, ids, undefined, [], {
            ids: ids.map((id) => deviceOf(id)),
            kinds,
          });
        if (range === 2) {
          const mobile = ids.map((): DeviceKind => 'mobile');
          await recordHeartbeats(db, ids, undefined, [], {
            ids: ids.map((id) => deviceOf(id, 'b')),
            kinds: mobile,
          });
        }
      }
    }
    await bench.query('VACUUM ANALYZE pulse');
    const { rows: check } = await bench.query<{ several: string; devices: string }>(
      `SELECT (SELECT count(*) FROM pulse WHERE devices IS NOT NULL) AS several,
              (SELECT count(*) FROM pulse_devices) AS devices`,
    );
    console.log(`users on two devices: ${check[0]!.several}, devices: ${check[0]!.devices}`);
    for (let round = 0; round < rounds; round += 1) {
      for (const variant of VARIANTS) {
        const watch = watchBackends(bench, `pulse-dev-${variant}`);
        const { db: conn } = connections[variant];
        await watch.start();
        const until = Date.now() + roundSeconds * 1000;
        let heartbeats = 0;
        while (Date.now() < until) {
          const ids = randomIds(rangeOf(variant));
          if (variant === 'today') {
            await conn.executeQuery(CompiledQuery.raw(HEARTBEAT_BEFORE_DEVICES, [ids, []]));
          } else if (variant === 'todayNamed') {
            await conn.executeQuery(CompiledQuery.raw(TODAY_UPSERT_NAMED, [ids, []]));
          } else if (variant === 'none') {
            await recordHeartbeats(conn, ids);
          } else {
            const devices = ids.map((id) =>
              deviceOf(id, variant === 'two' && Math.random() < 0.5 ? 'b' : 'a'),
            );
            const kinds = devices.map((d): DeviceKind => (d.startsWith('b-b') ? 'mobile' : 'web'));
            await recordHeartbeats(conn, ids, undefined, [], { ids: devices, kinds });
          }
          heartbeats += ids.length;
        }
        const cpu = await watch.stop();
        if (!cpu.local) throw new Error('database CPU needs the PostgreSQL server on this machine');
        results[variant].push(((cpu.backendsSeconds + cpu.autovacuumSeconds) * 1e6) / heartbeats);
      }
      console.log(
        `round ${round + 1}: ${VARIANTS.map((v) => `${v} ${results[v].at(-1)!.toFixed(1)} us`).join(', ')}`,
      );
    }

    console.log(`measuring bytes per user at ${sizeRows.toLocaleString('en-US')} rows`);
    await bench.query(`
      CREATE TABLE size_today (user_id bigint PRIMARY KEY, last_hb timestamptz NOT NULL DEFAULT now(),
                               online_since timestamptz) WITH (fillfactor = 80);
      CREATE TABLE size_devices (user_id bigint PRIMARY KEY, last_hb timestamptz NOT NULL DEFAULT now(),
                                 online_since timestamptz, device_key integer DEFAULT 0,
                                 device_kind pulse_device_kind, devices pulse_device[])
        WITH (fillfactor = 80);
      CREATE TABLE size_two (LIKE size_devices INCLUDING ALL) WITH (fillfactor = 80);
      INSERT INTO size_today SELECT g, now(), now() FROM generate_series(1, ${sizeRows}) g;
      INSERT INTO size_devices
        SELECT g, now(), now(), hashtext('b-a' || lpad(g::text, 15, '0')), 'web'
        FROM generate_series(1, ${sizeRows}) g;
      INSERT INTO size_two
        SELECT g, now(), now(), hashtext('b-a' || lpad(g::text, 15, '0')), 'web',
               ARRAY[ROW(hashtext('b-a' || lpad(g::text, 15, '0')), 'web', now()),
                     ROW(hashtext('b-b' || lpad(g::text, 15, '0')), 'mobile', now())]::pulse_device[]
        FROM generate_series(1, ${sizeRows}) g;
      `);
    for (const table of ['size_today', 'size_devices', 'size_two']) {
      await bench.query(`VACUUM ANALYZE ${table}`);
    }
    const { rows } = await bench.query<{ today: string; devices: string; two: string }>(`
      SELECT pg_total_relation_size('size_today') AS today,
             pg_total_relation_size('size_devices') AS devices,
             pg_total_relation_size('size_two') AS two`);
    const row = rows[0]!;
    sizes = {
      today: Number(row.today) / sizeRows,
      oneDevice: Number(row.devices) / sizeRows,
      twoDevices: Number(row.two) / sizeRows,
    };
    await bench.query('DROP TABLE size_today; DROP TABLE size_devices; DROP TABLE size_two');
  } finally {
    await Promise.all(VARIANTS.map((v) => connections[v].close()));
    await bench.close();
  }

  const medians = Object.fromEntries(VARIANTS.map((v) => [v, median(results[v])])) as Record<
    Variant,
    number
  >;
  const ratio = (v: Variant) => medians[v] / medians.today;
  const machine = `${os.cpus().length} x ${os.cpus()[0]?.model ?? 'CPU'}`;
  writeFileSync(
    process.env.BENCH_RESULTS ?? new URL('./results/devices.json', import.meta.url),
    `${JSON.stringify(
      {
        measuredAt: new Date().toISOString(),
        machine,
        postgres: process.env.DATABASE_URL ? 'DATABASE_URL' : 'embedded',
        sizes: { users, batch, roundSeconds, rounds, sizeRows },
        dbCpuUsPerHeartbeat: results,
        median: medians,
        ratioToToday: {
          none: ratio('none'),
          one: ratio('one'),
          two: ratio('two'),
          twoPerUser: 2 * ratio('two'),
        },
        ratioToNamedToday: {
          one: medians.one / medians.todayNamed,
          two: medians.two / medians.todayNamed,
        },
        bytesPerUser: { ...sizes, oneDeviceRatio: sizes.oneDevice! / sizes.today! },
      },
      null,
      2,
    )}\n`,
  );
  console.log(`
Devices (issue 22): database CPU per heartbeat and bytes per user (${machine}, PostgreSQL: ${process.env.DATABASE_URL ? 'DATABASE_URL' : 'embedded'})
${users.toLocaleString('en-US')} users per variant, batches of ${batch}, ${rounds} alternating rounds of ${roundSeconds} s

| heartbeats | database CPU per heartbeat (median) | vs today |
|---|---|---|
| today (before devices) | ${medians.today.toFixed(1)} us | x1 |
| today, run by name | ${medians.todayNamed.toFixed(1)} us | x${ratio('todayNamed').toFixed(3)} |
| no device named | ${medians.none.toFixed(1)} us | x${ratio('none').toFixed(3)} |
| one device per user | ${medians.one.toFixed(1)} us | x${ratio('one').toFixed(3)} (target <= 1.1) |
| users on two devices | ${medians.two.toFixed(1)} us | x${ratio('two').toFixed(3)} per heartbeat (target <= 2), x${(2 * ratio('two')).toFixed(3)} per user (two beats) |

| bytes per online user | |
|---|---|
| today | ${sizes.today!.toFixed(1)} |
| one device | ${sizes.oneDevice!.toFixed(1)} (x${(sizes.oneDevice! / sizes.today!).toFixed(3)}, target <= 1.25) |
| two devices | ${sizes.twoDevices!.toFixed(1)} |
`);
}

await main();

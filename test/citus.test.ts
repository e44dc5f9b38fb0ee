/**
 * Pulse on Citus: every statement, the migrations and the layout they leave, and the sweeper's
 * exactness with several runners, against a real Citus coordinator.
 *
 * Runs when CITUS_URL names a database on a Citus coordinator that has the `citus` extension and
 * its workers added (docs/citus.md says how to get one); skipped otherwise (CI has no Citus).
 * Each test works in a schema of its own in that database (Citus metadata is per database, so a
 * fresh database would need its workers added again), and drops it afterwards.
 */
import { expect } from 'chai';
import { sql } from 'kysely';
import { USER_KEYED_TABLES } from '../lib/citus/citus-layout.ts';
import { openDatabase, type DatabaseHandle } from '../lib/infra/db.ts';
import { migrateToLatest } from '../lib/store/migrator.ts';
import {
  findOnlineUserIds,
  measureUserIdSpace,
  deviceKey,
  readPresence,
  recordHeartbeats,
  setDevicesOffline,
  setPulseTableUnlogged,
  sweepExpiredBatch,
  sweepExpiredRange,
} from '../lib/store/pulse-store.ts';
import { checkReadiness } from '../lib/store/readiness.ts';
import { ShardRouter } from '../lib/citus/shard-routing.ts';
import {
  readSweepLease,
  releaseSweepLease,
  renewSweepLease,
  tryAcquireSweepLease,
} from '../lib/store/sweep-lease.ts';
import { KeyRangeWalk, openSweepWalk } from '../sweeper/sweep-walk.ts';
import { Sweeper, type SweepReport } from '../sweeper/sweeper.ts';
import { startTestApp, type TestApp } from './support/app.ts';
import {
  citusUrl,
  createSchema,
  direct,
  idsOnWorker,
  migrate,
  onNode,
  onNodes,
  openOn,
  openOnNodes,
  throughProxy,
  waitForMetadataSync,
  workers,
  type CitusSchema,
} from './support/citus.ts';
import { MIGRATION_NAMES, migrationsNewerThan } from './support/migrations.ts';
import { SseStream } from './support/sse.ts';
import { startTcpProxy } from './support/tcp-proxy.ts';
import { silentLogger } from './support/database.ts';
import { adminQuery } from './support/server.ts';

const OLDER_THAN = 30;

interface Placement {
  table: string;
  method: string | null;
  colocation: number | null;
  shards: number;
}

/**
 * How each of Pulse's tables (and the migrator's) is placed: 'h' distributed by hash, 'n' a
 * reference table (one shard, a copy on every node), null local. Partitions are left out.
 */
async function layout(db: CitusSchema): Promise<Placement[]> {
  return db.query<Placement>(`
    SELECT c.relname AS table, p.partmethod::text AS method, p.colocationid AS colocation,
           (SELECT count(*)::int FROM pg_dist_shard s WHERE s.logicalrelid = c.oid) AS shards
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = '${db.schema}'
    LEFT JOIN pg_dist_partition p ON p.logicalrelid = c.oid
    WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
      AND (c.relname LIKE 'pulse%' OR c.relname LIKE 'kysely%')
    ORDER BY c.relname`);
}

const placedOf = async (db: CitusSchema) =>
  (await layout(db)).map(({ table, method, shards }) => ({ table, method, shards }));

/** The layout `npm run migrate` leaves on a Citus database with `shards` shards. */
const migratedLayout = (shards: number) => [
  { table: 'kysely_migration', method: 'n', shards: 1 },
  { table: 'kysely_migration_lock', method: 'n', shards: 1 },
  { table: 'pulse', method: 'h', shards },
  { table: 'pulse_events', method: 'h', shards },
  { table: 'pulse_job_leases', method: 'n', shards: 1 },
  { table: 'pulse_last_seen', method: 'h', shards },
  { table: 'pulse_privacy', method: 'h', shards },
  { table: 'pulse_settings', method: 'n', shards: 1 },
  { table: 'pulse_sweeper_lease', method: 'n', shards: 1 },
  { table: 'pulse_visibility_changes', method: 'h', shards },
  // The webhook deliverer refuses Citus (it reads the log by snapshot): its tables stay local.
  { table: 'pulse_webhook_batches', method: null, shards: 0 },
  { table: 'pulse_webhook_parked', method: null, shards: 0 },
  { table: 'pulse_webhooks', method: null, shards: 0 },
];

/** 50 single heartbeats of users on the healthy worker: 200; of the stopped one's: 503. */
async function expectHeartbeatsSplit(app: TestApp, up: number[], down: number[]): Promise<void> {
  const singles = await Promise.all(
    [...up.slice(0, 50), ...down.slice(0, 50)].map((id) =>
      app.post('/status/update', { user_id: id }),
    ),
  );
  const statuses = singles.map((r) => r.status);
  expect(statuses.slice(0, 50), 'users on the healthy worker').to.deep.equal(Array(50).fill(200));
  expect(statuses.slice(50), 'users on the stopped worker').to.deep.equal(Array(50).fill(503));
  expect(singles[50]!.headers.get('retry-after')).to.equal('1');
}

const asUsers = (ids: readonly number[]) => ids.map((id) => ({ user_id: id }));

async function putRows(db: CitusSchema, first: number, last: number, ageSeconds: number) {
  await sql`INSERT INTO pulse (user_id, last_hb)
    SELECT i, now() - make_interval(secs => ${ageSeconds})
    FROM generate_series(${first}::bigint, ${last}::bigint) i
    ON CONFLICT (user_id) DO UPDATE SET last_hb = EXCLUDED.last_hb`.execute(db.db);
}

async function userIds(db: CitusSchema): Promise<number[]> {
  const rows = await db.db.selectFrom('pulse').select('user_id').orderBy('user_id').execute();
  return rows.map((r) => Number(r.user_id));
}

(citusUrl ? describe : describe.skip)(
  citusUrl
    ? 'on Citus (CITUS_URL)'
    : 'on Citus: SKIPPED, CITUS_URL is not set (a Citus coordinator database; see docs/citus.md)',
  function () {
    this.timeout(120_000);
    let db: CitusSchema;
    beforeEach(async () => {
      db = await createSchema();
    });
    afterEach(async () => {
      await db.drop();
    });

    describe('migrations', () => {
      it('distribute the tables keyed by user_id, share the small ones, and down then up restores that', async function () {
        this.timeout(300_000); // every migration down and up again, each a process
        const up = await migrate(db.url);
        expect(up.code, up.out).to.equal(0);
        const expected = migratedLayout(db.shardCount);
        expect(await placedOf(db)).to.deep.equal(expected);
        expect(await checkReadiness(db.db)).to.deep.equal({ ready: true });
        const again = await migrate(db.url);
        expect(again.out).to.match(/already up to date/);
        expect(again.out).to.not.match(/distributed by|reference tables/);

        // 0010 makes the shared tables reference tables; down makes them local (0011 first).
        for (const newer of [...migrationsNewerThan('0011_held_reason'), '0011_held_reason']) {
          expect((await migrate(db.url, ['down'])).out).to.include(`reverted ${newer}`);
        }
        const down = await migrate(db.url, ['down']);
        expect(down.out).to.match(/reverted 0010_shared_tables_on_every_node/);
        const local = ['pulse_job_leases', 'pulse_settings', 'pulse_sweeper_lease'];
        expect(await placedOf(db)).to.deep.equal(
          expected.map((t) => (local.includes(t.table) ? { ...t, method: null, shards: 0 } : t)),
        );
        expect(await checkReadiness(db.db)).to.deep.include({ ready: false });

        expect((await migrate(db.url)).out).to.match(/applied 0010_shared_tables_on_every_node/);
        expect(await placedOf(db)).to.deep.equal(expected);

        // All the way down and up again: the same layout.
        for (let i = 0; i < MIGRATION_NAMES.length; i += 1) {
          const step = await migrate(db.url, ['down']);
          expect(step.code, step.out).to.equal(0);
        }
        expect((await placedOf(db)).map((t) => t.table)).to.deep.equal([
          'kysely_migration',
          'kysely_migration_lock',
        ]);
        expect((await migrate(db.url)).code).to.equal(0);
        expect(await placedOf(db)).to.deep.equal(expected);
      });

      it('find the migrator tables of this schema, not those of a schema migrated before', async () => {
        // The database's own schema (search_path of CITUS_URL) migrated, as a deployment is.
        const other = await createSchema();
        try {
          expect((await migrate(other.url)).code).to.equal(0);
          const fresh = await migrate(db.url);
          expect(fresh.code, fresh.out).to.equal(0);
          expect(fresh.out).to.match(/applied 0001_create_pulse/);
          expect(await placedOf(db)).to.deep.equal(migratedLayout(db.shardCount));
        } finally {
          await other.drop();
        }
      });

      it('readiness names a shared table that is not a reference table, and migrate fixes it', async () => {
        await migrateToLatest(db.db);
        await db.query(`SELECT undistribute_table('pulse_settings')`);
        expect(await checkReadiness(db.db)).to.deep.equal({
          ready: false,
          reason: 'pulse_settings is not a reference table (run npm run migrate)',
        });
        expect((await migrate(db.url)).out).to.match(/reference tables: pulse_settings/);
        expect(await checkReadiness(db.db)).to.deep.equal({ ready: true });
      });

      it('co-locate a companion table keyed by user_id with pulse, and readiness catches a local one', async () => {
        expect(USER_KEYED_TABLES).to.include('pulse_last_seen');
        await migrateToLatest(db.db);
        // A companion table left local (as a migration added after 0005 would create it).
        await db.query(`SELECT undistribute_table('pulse_last_seen')`);
        expect(await checkReadiness(db.db)).to.deep.equal({
          ready: false,
          reason: 'pulse_last_seen is not distributed by user_id (run npm run migrate)',
        });
        const run = await migrate(db.url);
        expect(run.out).to.match(/distributed by user_id: pulse_last_seen/);
        const placed = await layout(db);
        const pulse = placed.find((t) => t.table === 'pulse');
        const lastSeen = placed.find((t) => t.table === 'pulse_last_seen');
        expect(lastSeen).to.include({
          table: 'pulse_last_seen',
          method: 'h',
          shards: db.shardCount,
        });
        expect(lastSeen?.colocation).to.equal(pulse?.colocation);
        expect(await checkReadiness(db.db)).to.deep.equal({ ready: true });

        // Undistributed behind Pulse's back: not ready until migrate puts them back.
        await db.query(`SELECT undistribute_table('pulse_last_seen')`);
        await db.query(`SELECT undistribute_table('pulse_privacy')`);
        expect(await checkReadiness(db.db)).to.deep.equal({
          ready: false,
          reason:
            'pulse_last_seen is not distributed by user_id; pulse_privacy is not distributed by user_id (run npm run migrate)',
        });
        expect((await migrate(db.url)).out).to.match(
          /distributed by user_id: pulse_last_seen, pulse_privacy/,
        );
        expect(await checkReadiness(db.db)).to.deep.equal({ ready: true });
      });

      it('put pulse, undistributed alone, back with its companions, whatever shard count is in force', async () => {
        await migrateToLatest(db.db);
        await db.query(`SELECT undistribute_table('pulse')`);
        expect(await checkReadiness(db.db)).to.deep.include({ ready: false });
        // Another shard count in force now: the database's default group would be another one.
        const other = db.shardCount * 2;
        const withCount = new URL(db.url);
        withCount.searchParams.set(
          'options',
          `${withCount.searchParams.get('options')} -c citus.shard_count=${other}`,
        );
        const run = await migrate(withCount.toString());
        expect(run.out).to.match(/distributed by user_id: pulse$/m);
        const placed = await layout(db);
        const pulse = placed.find((t) => t.table === 'pulse');
        expect(pulse).to.include({ method: 'h', shards: db.shardCount });
        for (const table of ['pulse_last_seen', 'pulse_events', 'pulse_privacy']) {
          expect(placed.find((t) => t.table === table)?.colocation, table).to.equal(
            pulse?.colocation,
          );
        }
        expect(await checkReadiness(db.db)).to.deep.equal({ ready: true });
      });

      it('switch pulse to UNLOGGED and back while distributed', async () => {
        await migrateToLatest(db.db);
        expect(await setPulseTableUnlogged(db.db, true)).to.equal(true);
        const persistence = async () =>
          (
            await db.query<{ p: string }>(
              `SELECT relpersistence AS p FROM pg_class WHERE oid = 'pulse'::regclass`,
            )
          )[0]?.p;
        expect(await persistence()).to.equal('u');
        await putRows(db, 1, 100, 0);
        expect(await setPulseTableUnlogged(db.db, false)).to.equal(true);
        expect(await persistence()).to.equal('p');
        expect(await userIds(db)).to.have.length(100);
      });
    });

    describe('statements', () => {
      beforeEach(async () => {
        await migrateToLatest(db.db);
      });

      it('record heartbeats (duplicates, many shards) and read them back, routed by shard or not', async () => {
        const ids = Array.from({ length: 1000 }, (_, i) => i * 97 + 1);
        const router = new ShardRouter(db.db);
        // One statement (INSERT ... SELECT), then one per shard (VALUES), then a single id.
        await recordHeartbeats(db.db, [...ids.slice(0, 500), ids[0]!, ids[1]!]);
        await putRows(db, 1, 1, 60); // one stale user
        await recordHeartbeats(db.db, [...ids.slice(500), ids[500]!, ids[501]!], router);
        await recordHeartbeats(db.db, [ids[999]!], router);
        expect(await userIds(db)).to.deep.equal(ids);
        expect(await router.shardRanges()).to.have.length(db.shardCount);
        const asked = [...ids, 5, 6]; // 5 and 6 have no row
        expect((await router.group(asked))?.length).to.equal(db.shardCount);
        const routed = await findOnlineUserIds(db.db, asked, router);
        const unrouted = await findOnlineUserIds(db.db, asked);
        const expected = new Set(ids.filter((id) => id !== 1));
        expect(routed).to.deep.equal(expected);
        expect(unrouted).to.deep.equal(expected);
      });

      it('record beats from several devices per user, routed by shard: the second device and a switch', async () => {
        const router = new ShardRouter(db.db);
        const users = Array.from({ length: 40 }, (_, i) => i * 131 + 3);
        const devices = (device: string) => ({
          ids: users.map(() => device),
          kinds: users.map(() => 'web' as const),
        });
        await recordHeartbeats(db.db, users, router, [], devices('laptop'));
        // Another device while the first is fresh: each user is on two (in their pulse row).
        await recordHeartbeats(db.db, users, router, [], devices('phone'));
        const [pairs] = await db.query<{ several: string; rows: string }>(`
          SELECT (SELECT count(*) FROM pulse WHERE devices IS NOT NULL) AS several,
                 (SELECT count(*) FROM pulse_devices) AS rows`);
        expect(pairs).to.deep.equal({ several: '40', rows: '80' });
        // Beating again from the phone (users on several devices) moves its beats only.
        // (Citus refuses STABLE functions over columns in an UPDATE: the array anew.)
        await db.query(`UPDATE pulse SET last_hb = now() - interval '5 seconds',
          devices = ARRAY[ROW(${deviceKey('phone')}, 'web', now() - interval '5 seconds'),
                          ROW(${deviceKey('laptop')}, 'web', now() - interval '5 seconds')]::pulse_device[]`);
        await recordHeartbeats(db.db, users, router, [], devices('phone'));
        const fresh = await db.query<{ device_key: number; n: string }>(`
          SELECT device_key, count(*) AS n FROM pulse_devices
          WHERE last_hb > now() - interval '2 seconds' GROUP BY device_key`);
        expect(fresh).to.deep.equal([{ device_key: deviceKey('phone'), n: '40' }]);
        // The phone leaves: each user is back on the laptop alone (device_key, no array).
        await setDevicesOffline(
          db.db,
          users,
          users.map(() => 'phone'),
          undefined,
          router,
        );
        const [after] = await db.query<{ online: string; rows: string }>(`
          SELECT (SELECT count(*) FROM pulse WHERE device_key = ${deviceKey('laptop')}) AS online,
                 (SELECT count(*) FROM pulse WHERE devices IS NOT NULL) AS rows`);
        expect(after).to.deep.equal({ online: '40', rows: '0' });
        // The last device leaves: the users go offline, logged once each.
        await setDevicesOffline(
          db.db,
          users,
          users.map(() => 'laptop'),
          undefined,
          router,
        );
        const [gone] = await db.query<{ left: string; offline: string }>(`
          SELECT (SELECT count(*) FROM pulse) AS left,
                 (SELECT count(*) FROM pulse_events WHERE NOT online AND reason = 'offline') AS offline`);
        expect(gone).to.deep.equal({ left: '0', offline: '40' });
      });

      it('group ids exactly as Citus places them', async () => {
        const ids = Array.from({ length: 300 }, (_, i) => i * 1_000_003 + 7);
        const groups = (await new ShardRouter(db.db).group(ids)) ?? [];
        const rows = await db.query<{ id: string; shard: string }>(
          `SELECT id::text, get_shard_id_for_distribution_column('pulse', id)::text AS shard
           FROM unnest(ARRAY[${ids.join(',')}]::bigint[]) id`,
        );
        const shardOf = new Map(rows.map((r) => [Number(r.id), r.shard]));
        for (const group of groups) {
          expect(new Set(group.map((id) => shardOf.get(id))).size).to.equal(1);
        }
        expect(groups.length).to.equal(new Set(shardOf.values()).size);
      });

      it('sweep by cursor batch and by key range, deleting only expired rows', async () => {
        await putRows(db, 1, 200, 120);
        await putRows(db, 201, 400, 0);
        await putRows(db, 401, 500, 120);
        expect(await measureUserIdSpace(db.db)).to.deep.equal({ min: '1', max: '500', rows: 500 });
        expect(
          await sweepExpiredBatch(db.db, { cursor: '100', batchSize: 150, olderThanSeconds: 30 }),
        ).to.deep.equal({ deleted: 100, nextCursor: '250' });
        expect(
          await sweepExpiredRange(db.db, { after: '250', upTo: '450', olderThanSeconds: 30 }),
        ).to.equal(50);
        const left = await userIds(db);
        expect(left.filter((id) => id <= 100 || id > 450)).to.have.length(150);
        expect(left.filter((id) => id > 100 && id <= 450)).to.deep.equal(
          Array.from({ length: 200 }, (_, i) => 201 + i),
        );
      });

      it('take, renew, read and release the sweep lease on the reference lease table', async () => {
        expect(await tryAcquireSweepLease(db.db, 'a', 30)).to.equal(true);
        expect(await tryAcquireSweepLease(db.db, 'b', 30)).to.equal(false);
        const renewed = await db.db.transaction().execute((trx) => renewSweepLease(trx, 'a', 30));
        expect(renewed).to.equal(true);
        expect((await readSweepLease(db.db))?.holder).to.equal('a');
        await releaseSweepLease(db.db, 'a');
        expect(await tryAcquireSweepLease(db.db, 'b', 30)).to.equal(true);
      });

      it('serve every API route, and readiness, on the distributed table', async () => {
        const app = await startTestApp(db);
        try {
          expect((await app.post('/status/update', { user_id: 42 })).status).to.equal(200);
          const gateway = await app.post(
            '/status/update',
            Array.from({ length: 500 }, (_, i) => ({ user_id: 1000 + i })),
          );
          expect(await gateway.json()).to.deep.equal({ status: 'success', accepted: 500 });
          expect(await (await app.get('/status/42')).json()).to.deep.include({
            user_id: 42,
            is_online: true,
          });
          const batch = await app.post(
            '/status/batch',
            [42, 43, 1000, 1499, 1500].map((id) => ({ user_id: id })),
          );
          const answers = (await batch.json()) as Array<{ user_id: number; is_online: boolean }>;
          expect(answers.map(({ user_id, is_online }) => ({ user_id, is_online }))).to.deep.equal([
            { user_id: 42, is_online: true },
            { user_id: 43, is_online: false },
            { user_id: 1000, is_online: true },
            { user_id: 1499, is_online: true },
            { user_id: 1500, is_online: false },
          ]);
          expect((await app.get('/readyz')).status).to.equal(200);
        } finally {
          await app.close();
        }
      });
    });

    describe('sweeper', () => {
      beforeEach(async () => {
        await migrateToLatest(db.db);
      });

      const sweeperOn = (handle: DatabaseHandle, batchSize: number) =>
        new Sweeper(handle.db, silentLogger, {
          schedule: '* * * * * *',
          olderThanSeconds: OLDER_THAN,
          batchSize,
          leaseTtlSeconds: 30,
        });

      it('several runners together delete every expired row exactly once, in key ranges', async () => {
        // Expired at odd ids, fresh at even ids.
        await sql`INSERT INTO pulse (user_id, last_hb)
          SELECT i, CASE WHEN i % 2 = 1 THEN now() - interval '2 minutes' ELSE now() END
          FROM generate_series(1, 20000::bigint) i`.execute(db.db);
        const pools = Array.from({ length: 3 }, () =>
          openDatabase({
            connectionString: db.url,
            poolMax: 3,
            applicationName: 'pulse-test-sweeper',
            logger: silentLogger,
          }),
        );
        try {
          const sweepers = pools.map((pool) => sweeperOn(pool, 1000));
          const reports: SweepReport[] = await Promise.all(sweepers.map((s) => s.sweepOnce()));
          expect(reports.map((r) => r.outcome)).to.not.include('failed');
          expect(reports.filter((r) => r.leaseHeld)).to.have.length.at.least(1);
          expect(reports.reduce((sum, r) => sum + r.deleted, 0)).to.equal(10_000);
          const swept = reports.find((r) => r.deleted > 0)!;
          expect(swept.batches).to.be.at.least(2);
          // Ranges start at about 1,000 rows and stay within 8 times that.
          expect(swept.batches).to.be.at.least(Math.floor(20_000 / 8_000));
          const left = await userIds(db);
          expect(left).to.have.length(10_000);
          expect(left.every((id) => id % 2 === 0)).to.equal(true);
          for (const sweeper of sweepers) await sweeper.stop();
        } finally {
          await Promise.all(pools.map((pool) => pool.close()));
        }
      });

      it('walks key ranges on the distributed table', async () => {
        await putRows(db, 1, 5000, 120);
        const walk = await openSweepWalk(db.db, { batchSize: 1000, olderThanSeconds: OLDER_THAN });
        expect(walk).to.be.instanceOf(KeyRangeWalk);
        expect((walk as KeyRangeWalk).rangeWidth).to.equal(1000n);
      });

      it('never deletes a row refreshed while the sweep runs', async () => {
        await putRows(db, 1, 30_000, 120);
        const refreshed = Array.from({ length: 500 }, (_, i) => 29_000 + i * 2);
        const sweeper = new Sweeper(db.db, silentLogger, {
          schedule: '* * * * * *',
          olderThanSeconds: OLDER_THAN,
          batchSize: 500,
          leaseTtlSeconds: 30,
          batchPauseMs: 50,
        });
        const sweeping = sweeper.sweepOnce();
        const count = async () =>
          Number(
            (await db.query<{ n: string }>('SELECT count(*) AS n FROM pulse'))[0]?.n ?? 30_000,
          );
        while ((await count()) === 30_000) await new Promise((r) => setTimeout(r, 10));
        // Heartbeats for users the sweep has not reached yet (it started at the lowest ids).
        await recordHeartbeats(db.db, refreshed);
        const report = await sweeping;
        expect(report.outcome).to.equal('done');
        expect(await userIds(db)).to.deep.equal(refreshed);
        expect(report.deleted).to.equal(30_000 - refreshed.length);
        await sweeper.stop();
      });
    });

    describe('any node', () => {
      beforeEach(async () => {
        const run = await migrate(db.url);
        expect(run.code, run.out).to.equal(0);
      });

      it('serves every route, a stream, readiness and the migration check through a worker', async () => {
        const [worker] = await workers(db);
        const handle = openOn(onNode(db.url, worker!), 'pulse-test-worker');
        let app: TestApp | undefined;
        let stream: SseStream | undefined;
        try {
          expect(await checkReadiness(handle.db)).to.deep.equal({ ready: true });
          app = await startTestApp(handle);
          expect((await app.post('/status/update', { user_id: 42 })).status).to.equal(200);
          const gateway = await app.post(
            '/status/update',
            Array.from({ length: 500 }, (_, i) => ({ user_id: 1000 + i })),
          );
          expect(await gateway.json()).to.deep.equal({ status: 'success', accepted: 500 });
          expect(await (await app.get('/status/42')).json()).to.deep.include({
            user_id: 42,
            is_online: true,
          });
          const batch = await app.post(
            '/status/batch',
            [42, 43, 1000, 1499, 1500].map((id) => ({ user_id: id })),
          );
          const answers = (await batch.json()) as Array<{ user_id: number; is_online: boolean }>;
          expect(answers.map((a) => a.is_online)).to.deep.equal([true, false, true, true, false]);

          stream = await SseStream.open(`${app.baseUrl}/status/stream?watch=42,43`);
          expect(stream.response.status).to.equal(200);
          const snapshot = await stream.next<Array<{ user_id: number; is_online: boolean }>>();
          expect(snapshot.data.map((s) => s.is_online)).to.deep.equal([true, false]);
          expect((await app.post('/status/update', { user_id: 43 })).status).to.equal(200);
          expect(await stream.next()).to.deep.include({ event: 'change' });

          expect((await app.post('/status/offline', { user_id: 42 })).status).to.equal(200);
          expect(await (await app.get('/status/42')).json()).to.deep.include({ is_online: false });
          expect((await app.get('/readyz')).status).to.equal(200);
        } finally {
          stream?.close();
          await app?.close();
          await handle.close();
        }
      });

      it('with a pool per worker, sends each shard statement to the node holding the shard', async () => {
        const [one, two] = await workers(db);
        const handle = openOnNodes(onNodes(db.url, [one!, two!]), 'pulse-test-nodes');
        // Citus's own connections to worker two go through a proxy, which then refuses them: only
        // the API's direct pool to worker two can still write its shards (run locally there).
        const proxy = await startTcpProxy({ targetHost: two!.host, targetPort: two!.port });
        let app: TestApp | undefined;
        try {
          expect(handle.nodes.map((n) => n.name)).to.deep.equal([
            `${one!.host}:${one!.port}`,
            `${two!.host}:${two!.port}`,
          ]);
          const candidates = Array.from({ length: 400 }, (_, i) => i + 1);
          const onOne = await idsOnWorker(db, candidates, one!);
          const onTwo = await idsOnWorker(db, candidates, two!);
          const router = new ShardRouter(handle.db, 'pulse', undefined, handle.nodes);
          for (const group of (await router.group(candidates)) ?? []) {
            const holder = onOne.includes(group[0]!) ? handle.nodes[0] : handle.nodes[1];
            expect(router.executorFor(group)).to.equal(holder!.db);
            expect(router.executorFor(group, 'read')).to.equal(holder!.readDb);
          }

          await throughProxy(db, two!, proxy);
          proxy.refuse();
          proxy.dropConnections();
          app = await startTestApp(handle);
          const a = app;
          const users = [...onOne.slice(0, 20), ...onTwo.slice(0, 20)];
          const singles = await Promise.all(
            users.map((id) => a.post('/status/update', { user_id: id })),
          );
          expect(singles.map((r) => r.status)).to.deep.equal(Array(40).fill(200));
          const gateway = await app.post('/status/update', asUsers(users));
          expect(gateway.status, await gateway.text()).to.equal(200);
          // Status reads take each shard's tables directly on the node holding them: users on
          // either worker are read, with Citus's connection to worker two cut.
          const batch = await app.post('/status/batch', asUsers(users));
          expect(batch.status, 'batch read').to.equal(200);
          const answers = (await batch.json()) as Array<{ is_online: boolean }>;
          expect(answers.map((s) => s.is_online)).to.deep.equal(Array(40).fill(true));
          const single = await app.get(`/status/${onTwo[0]}`);
          expect(single.status).to.equal(200);
          expect(await single.json()).to.deep.include({ user_id: onTwo[0], is_online: true });
          // Through the coordinator, even a write needs Citus's connection to worker two.
          const viaCoordinator = await recordHeartbeats(db.db, [onTwo[0]!]).then(
            () => 'answered',
            (error: Error) => error.message,
          );
          expect(viaCoordinator).to.match(/connection|remote node/);
        } finally {
          proxy.accept();
          await app?.close();
          await handle.close();
          await direct(db, two!);
          await proxy.close();
        }
      });

      it('with a pool per worker, reads a shard on its node directly, and the distributed way once the shard has moved', async () => {
        const [one, two] = await workers(db);
        const handle = openOnNodes(onNodes(db.url, [one!, two!]), 'pulse-test-nodes');
        try {
          const candidates = Array.from({ length: 400 }, (_, i) => i + 1);
          const [user] = await idsOnWorker(db, candidates, one!);
          const router = new ShardRouter(handle.db, 'pulse', undefined, handle.nodes);
          await router.group(candidates);
          const shard = router.shardTablesFor([user!]);
          expect(shard?.db).to.equal(handle.nodes[0]!.readDb);
          expect(shard?.tables.pulse).to.match(/pulse_\d+$/);
          expect(shard?.tables.settings).to.match(/pulse_settings_\d+$/);
          await recordHeartbeats(db.db, [user!]);
          const online = async () => (await readPresence(handle.db, [user!], router)).get(user!);
          expect((await online())?.online).to.equal(true);
          // The shard moves to worker two; this router still places it on worker one, where its
          // old tables wait for Citus's deferred cleanup. A write after the move is read all the same.
          await db.query(`
            SELECT citus_move_shard_placement(
              get_shard_id_for_distribution_column('pulse', ${user}),
              '${one!.host}', ${one!.port}, '${two!.host}', ${two!.port},
              shard_transfer_mode => 'block_writes')`);
          await db.query(
            `UPDATE pulse SET last_hb = now() - interval '1 hour' WHERE user_id = ${user}`,
          );
          expect(router.shardTablesFor([user!])?.db).to.equal(handle.nodes[0]!.readDb);
          expect((await online())?.online).to.equal(false);
          // Once the router reads the placements again, the read goes to worker two directly.
          const fresh = new ShardRouter(handle.db, 'pulse', undefined, handle.nodes);
          await fresh.group(candidates);
          expect(fresh.shardTablesFor([user!])?.db).to.equal(handle.nodes[1]!.readDb);
          expect((await readPresence(handle.db, [user!], fresh)).get(user!)?.online).to.equal(
            false,
          );
        } finally {
          await handle.close();
        }
      });

      it('sweeps through a worker while a sweeper on the coordinator competes: each expired row once', async () => {
        await sql`INSERT INTO pulse (user_id, last_hb)
          SELECT i, CASE WHEN i % 2 = 1 THEN now() - interval '2 minutes' ELSE now() END
          FROM generate_series(1, 20000::bigint) i`.execute(db.db);
        const [worker] = await workers(db);
        const onWorker = openOn(onNode(db.url, worker!), 'pulse-test-sweeper');
        const options = {
          schedule: '* * * * * *',
          olderThanSeconds: OLDER_THAN,
          batchSize: 1000,
          leaseTtlSeconds: 30,
        };
        const sweepers = [db, onWorker].map((h) => new Sweeper(h.db, silentLogger, options));
        try {
          const reports = await Promise.all(sweepers.map((s) => s.sweepOnce()));
          expect(reports.map((r) => r.outcome)).to.not.include('failed');
          expect(reports.reduce((sum, r) => sum + r.deleted, 0)).to.equal(10_000);
          // The worker's sweeper alone, later: it takes the lease the other released.
          await putRows(db, 30_001, 30_010, 120);
          const alone = await sweepers[1]!.sweepOnce();
          expect(alone).to.deep.include({ outcome: 'done', deleted: 10, leaseHeld: true });
          const left = await userIds(db);
          expect(left).to.have.length(10_000);
          expect(left.every((id) => id % 2 === 0)).to.equal(true);
        } finally {
          for (const sweeper of sweepers) await sweeper.stop();
          await onWorker.close();
        }
      });
    });

    describe('a worker down', () => {
      beforeEach(async () => {
        expect((await migrate(db.url)).code).to.equal(0);
      });

      it('fails only the heartbeats with an id on its shards, as 503 with Retry-After, never 500', async () => {
        const [healthy, victim] = await workers(db);
        // Citus reaches the victim through a proxy the test can cut (on every node: the node's
        // address is synced metadata).
        const proxy = await startTcpProxy({ targetHost: victim!.host, targetPort: victim!.port });
        await db.query(
          `SELECT citus_update_node(${victim!.nodeId}, '${proxy.host}', ${proxy.port})`,
        );
        let app: TestApp | undefined;
        try {
          app = await startTestApp(db);
          const candidates = Array.from({ length: 400 }, (_, i) => i + 1);
          const up = await idsOnWorker(db, candidates, healthy!);
          const down = await idsOnWorker(db, candidates, victim!);
          expect(up.length).to.be.at.least(100);
          expect(down.length).to.be.at.least(100);
          // Both workers answer before the cut; the router has read the shards.
          for (const id of [up[0]!, down[0]!]) {
            const before = await app.post('/status/update', { user_id: id });
            expect(before.status, await before.text()).to.equal(200);
          }

          proxy.refuse();
          proxy.dropConnections();
          await expectHeartbeatsSplit(app, up, down);

          const gatewayUp = await app.post(
            '/status/update',
            up.slice(50, 100).map((id) => ({ user_id: id })),
          );
          expect(gatewayUp.status, await gatewayUp.text()).to.equal(200);
          const gatewayMixed = await app.post('/status/update', [
            { user_id: up[0] },
            { user_id: down[0] },
          ]);
          expect(gatewayMixed.status).to.equal(503);

          // Reads of users on the healthy worker are answered; of the others, 503.
          const readUp = await app.post('/status/batch', asUsers(up.slice(0, 50)));
          expect(readUp.status, await readUp.clone().text()).to.equal(200);
          expect(((await readUp.json()) as unknown[]).length).to.equal(50);
          expect((await app.get(`/status/${up[0]}`)).status).to.equal(200);
          const readDown = await app.post('/status/batch', asUsers(down.slice(0, 5)));
          expect(readDown.status).to.equal(503);
          expect((await app.get(`/status/${down[0]}`)).status).to.equal(503);
        } finally {
          proxy.accept();
          await adminQuery(
            citusUrl!,
            `SELECT citus_update_node(${victim!.nodeId}, '${victim!.host}', ${victim!.port})`,
          );
          // The workers learn the address back from the maintenance daemon: wait for it, as DDL
          // (the schema's DROP) needs every node in sync.
          await waitForMetadataSync(db);
          await app?.close();
          await proxy.close();
        }
      });

      it('with a pool per worker: users on the healthy worker are written and read, the others get 503, readiness names the node', async () => {
        const [healthy, victim] = await workers(db);
        const proxy = await startTcpProxy({ targetHost: victim!.host, targetPort: victim!.port });
        // Citus and the API both reach the victim through the proxy, as if it went down.
        const handle = openOnNodes(
          onNodes(db.url, [healthy!, { host: proxy.host, port: proxy.port }]),
          'pulse-test-nodes',
        );
        let app: TestApp | undefined;
        try {
          await throughProxy(db, victim!, proxy);
          app = await startTestApp(handle);
          const candidates = Array.from({ length: 400 }, (_, i) => i + 1);
          const up = await idsOnWorker(db, candidates, healthy!);
          const down = await idsOnWorker(db, candidates, victim!);
          for (const id of [up[0]!, down[0]!]) {
            const before = await app.post('/status/update', { user_id: id });
            expect(before.status, await before.text()).to.equal(200);
          }
          expect(await (await app.get('/readyz')).json()).to.deep.equal({
            status: 'ready',
            nodes: [
              { node: `${healthy!.host}:${healthy!.port}`, status: 'ready' },
              { node: `${proxy.host}:${proxy.port}`, status: 'ready' },
            ],
          });

          proxy.refuse();
          proxy.dropConnections();
          await expectHeartbeatsSplit(app, up, down);
          const gatewayUp = await app.post('/status/update', asUsers(up.slice(50, 100)));
          expect(gatewayUp.status, await gatewayUp.text()).to.equal(200);
          const readUp = await app.post('/status/batch', asUsers(up.slice(0, 100)));
          expect(readUp.status, await readUp.clone().text()).to.equal(200);
          const answers = (await readUp.json()) as Array<{ is_online: boolean }>;
          expect(answers.map((s) => s.is_online)).to.deep.equal(Array(100).fill(true));
          expect((await app.get(`/status/${up[1]}`)).status).to.equal(200);
          expect((await app.get(`/status/${down[1]}`)).status).to.equal(503);

          const ready = await app.get('/readyz');
          expect(ready.status, await ready.clone().text()).to.equal(200);
          expect(await ready.json()).to.deep.equal({
            status: 'ready',
            nodes: [
              { node: `${healthy!.host}:${healthy!.port}`, status: 'ready' },
              {
                node: `${proxy.host}:${proxy.port}`,
                status: 'not_ready',
                reason: 'database unavailable',
              },
            ],
          });
        } finally {
          proxy.accept();
          await app?.close();
          await handle.close();
          await direct(db, victim!);
          await proxy.close();
        }
      });
    });
  },
);

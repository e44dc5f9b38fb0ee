/**
 * Pulse on Citus: every statement, the migrations and the layout they leave, and the sweeper's
 * exactness with several runners, against a real Citus coordinator.
 *
 * Runs when CITUS_URL names a database on a Citus coordinator that has the `citus` extension and
 * its workers added (docs/citus.md says how to get one); skipped otherwise (CI has no Citus).
 * Each test works in a schema of its own in that database (Citus metadata is per database, so a
 * fresh database would need its workers added again), and drops it afterwards.
 */
import { spawn } from 'node:child_process';
import { expect } from 'chai';
import { sql } from 'kysely';
import { USER_KEYED_TABLES } from '../lib/citus/citus-layout.ts';
import { openDatabase, type DatabaseHandle } from '../lib/infra/db.ts';
import { migrateToLatest } from '../lib/store/migrator.ts';
import {
  findOnlineUserIds,
  measureUserIdSpace,
  recordHeartbeats,
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
import { startTestApp } from './support/app.ts';
import { silentLogger } from './support/database.ts';
import { adminQuery, uniqueName } from './support/server.ts';

const citusUrl = process.env.CITUS_URL;
const OLDER_THAN = 30;

interface CitusSchema extends DatabaseHandle {
  /** A connection URL whose search_path is this schema. */
  url: string;
  schema: string;
  /** citus.shard_count in force for this database (32 unless the operator chose otherwise). */
  shardCount: number;
  query<R>(text: string): Promise<R[]>;
  drop(): Promise<void>;
}

function inSchema(url: string, schema: string): string {
  const parsed = new URL(url);
  parsed.searchParams.set('options', `-c search_path=${schema}`);
  return parsed.toString();
}

async function createSchema(): Promise<CitusSchema> {
  const schema = uniqueName('pulse_citus');
  await adminQuery(citusUrl!, `CREATE SCHEMA ${schema}`);
  const url = inSchema(citusUrl!, schema);
  const handle = openDatabase({
    connectionString: url,
    poolMax: 8,
    applicationName: 'pulse-test-citus',
    logger: silentLogger,
  });
  const { rows } = await sql<{
    shards: string;
  }>`SELECT current_setting('citus.shard_count') AS shards`.execute(handle.db);
  return {
    ...handle,
    url,
    schema,
    shardCount: Number(rows[0]!.shards),
    async query<R>(text: string) {
      return (await sql.raw<R>(text).execute(handle.db)).rows;
    },
    async drop() {
      await handle.close();
      await adminQuery(citusUrl!, `DROP SCHEMA IF EXISTS ${schema} CASCADE`);
    },
  };
}

function migrate(
  databaseUrl: string,
  args: string[] = [],
): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'scripts/migrate.ts', ...args], {
      env: { PATH: process.env.PATH, DATABASE_URL: databaseUrl, LOG_LEVEL: 'silent' },
    });
    let out = '';
    child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (out += chunk.toString()));
    child.on('exit', (code) => resolve({ code, out }));
  });
}

interface Placement {
  table: string;
  method: string | null;
  colocation: number | null;
  shards: number;
}

/** How each of Pulse's tables is placed: 'h' distributed by hash, null local. */
async function layout(db: CitusSchema): Promise<Placement[]> {
  return db.query<Placement>(`
    SELECT c.relname AS table, p.partmethod::text AS method, p.colocationid AS colocation,
           (SELECT count(*)::int FROM pg_dist_shard s WHERE s.logicalrelid = c.oid) AS shards
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = '${db.schema}'
    LEFT JOIN pg_dist_partition p ON p.logicalrelid = c.oid
    WHERE c.relkind = 'r' AND c.relname LIKE 'pulse%'
    ORDER BY c.relname`);
}

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
      it('distribute pulse by user_id, keep the lease local, and down then up restores that', async () => {
        const up = await migrate(db.url);
        expect(up.code, up.out).to.equal(0);
        const expected = [
          { table: 'pulse', method: 'h', shards: db.shardCount },
          { table: 'pulse_last_seen', method: 'h', shards: db.shardCount },
          { table: 'pulse_settings', method: null, shards: 0 },
          { table: 'pulse_sweeper_lease', method: null, shards: 0 },
        ];
        const placed = (await layout(db)).map(({ table, method, shards }) => ({
          table,
          method,
          shards,
        }));
        expect(placed).to.deep.equal(expected);
        expect(await checkReadiness(db.db)).to.deep.equal({ ready: true });

        const down = await migrate(db.url, ['down']);
        expect(down.out).to.match(/reverted 0005_distribute_by_user_id/);
        expect((await layout(db)).map((t) => t.method)).to.deep.equal([null, null, null, null]);
        expect(await checkReadiness(db.db)).to.deep.include({ ready: false });

        expect((await migrate(db.url)).out).to.match(/applied 0005_distribute_by_user_id/);
        expect(
          (await layout(db)).map(({ table, method, shards }) => ({ table, method, shards })),
        ).to.deep.equal(expected);

        // All the way down and up again: the same layout.
        for (let i = 0; i < 5; i += 1) expect((await migrate(db.url, ['down'])).code).to.equal(0);
        expect(await layout(db)).to.deep.equal([]);
        expect((await migrate(db.url)).code).to.equal(0);
        expect(
          (await layout(db)).map(({ table, method, shards }) => ({ table, method, shards })),
        ).to.deep.equal(expected);
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
        const [pulse, lastSeen] = await layout(db);
        expect(lastSeen).to.include({
          table: 'pulse_last_seen',
          method: 'h',
          shards: db.shardCount,
        });
        expect(lastSeen?.colocation).to.equal(pulse?.colocation);
        expect(await checkReadiness(db.db)).to.deep.equal({ ready: true });

        // Undistributed behind Pulse's back: not ready until migrate puts it back.
        await db.query(`SELECT undistribute_table('pulse_last_seen')`);
        await db.query(`SELECT undistribute_table('pulse')`);
        expect(await checkReadiness(db.db)).to.deep.equal({
          ready: false,
          reason:
            'pulse is not distributed by user_id; pulse_last_seen is not distributed by user_id (run npm run migrate)',
        });
        expect((await migrate(db.url)).out).to.match(
          /distributed by user_id: pulse, pulse_last_seen/,
        );
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

      it('take, renew, read and release the sweep lease on the local lease table', async () => {
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
  },
);

import { sql } from 'kysely';
import pg from 'pg';
import { openDatabase, type DatabaseHandle } from '../../lib/infra/db.ts';
import { createLogger } from '../../lib/infra/logger.ts';
import {
  adminQuery,
  queryOnce,
  SERVER_URL_VAR,
  TEMPLATE_DB_VAR,
  uniqueName,
  withDatabase,
} from './server.ts';

export const silentLogger = createLogger('test', 'silent');

export interface TestDatabase extends DatabaseHandle {
  url: string;
  name: string;
  /** Closes the pool and drops the database. */
  drop(): Promise<void>;
  /** Puts a row directly, with last_hb = now() - ageSeconds by the database clock. */
  putRow(userId: number, ageSeconds: number): Promise<void>;
  /** The user ids in the table, ascending. */
  userIds(): Promise<number[]>;
  /** Seconds since each user's last heartbeat, by the database clock. */
  ageOf(userId: number): Promise<number | undefined>;
  /** Every row as "user_id last_hb" (microseconds), ascending: equal snapshots, unchanged table. */
  snapshot(): Promise<string[]>;
  /** Sessions on this database waiting for a lock right now (a statement stuck behind lockPulse). */
  lockWaiters(): Promise<number>;
}

function env(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run the tests through mocha (npm test)`);
  return value;
}

export const serverUrl = (): string => env(SERVER_URL_VAR);

/**
 * Locks `pulse` from another connection until the returned release() is called: EXCLUSIVE blocks
 * every write, ACCESS EXCLUSIVE reads too.
 */
export async function lockPulse(
  databaseUrl: string,
  mode: 'EXCLUSIVE' | 'ACCESS EXCLUSIVE' = 'EXCLUSIVE',
): Promise<() => Promise<void>> {
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  await client.query('BEGIN');
  await client.query(`LOCK TABLE pulse IN ${mode} MODE`);
  let released: Promise<void> | undefined;
  // Idempotent: a test releases early, its `finally` again.
  return () =>
    (released ??= (async () => {
      await client.query('COMMIT');
      await client.end();
    })());
}

/** Each user's last_hb as the API renders last_seen (ISO 8601, milliseconds). */
export async function lastHeartbeats(
  database: DatabaseHandle,
  userIds: number[],
): Promise<Map<number, string>> {
  const rows = await database.db
    .selectFrom('pulse')
    .select(['user_id', 'last_hb'])
    .where('user_id', 'in', userIds.map(String))
    .execute();
  return new Map(rows.map((r) => [Number(r.user_id), r.last_hb.toISOString()]));
}

/** A fresh database, copied from the migrated template. */
export async function createTestDatabase(): Promise<TestDatabase> {
  const name = uniqueName('pulse_test');
  await adminQuery(serverUrl(), `CREATE DATABASE ${name} TEMPLATE ${env(TEMPLATE_DB_VAR)}`);
  const url = withDatabase(serverUrl(), name);
  const handle = openDatabase({
    connectionString: url,
    poolMax: 5,
    applicationName: 'pulse-test',
    logger: silentLogger,
  });
  const { db } = handle;
  return {
    ...handle,
    url,
    name,
    async drop() {
      await handle.close();
      await adminQuery(serverUrl(), `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    },
    async putRow(userId, ageSeconds) {
      // As a heartbeat that many seconds ago would: a row not marked online and young enough is
      // marked and logged online (lib/store/pulse-store.ts); an older one is left to the detector.
      await sql`WITH up AS (
          INSERT INTO pulse AS p (user_id, last_hb, online_since)
          SELECT ${userId}, now() - make_interval(secs => ${ageSeconds}),
                 CASE WHEN ${ageSeconds}::float8 < online_threshold_seconds
                      THEN now() - make_interval(secs => ${ageSeconds}) END
          FROM pulse_settings WHERE id = 1
          ON CONFLICT (user_id) DO UPDATE
            SET last_hb = EXCLUDED.last_hb, online_since = coalesce(p.online_since, EXCLUDED.online_since)
          RETURNING user_id, last_hb, online_since
        )
        INSERT INTO pulse_events (user_id, online, reason, at, last_seen)
        SELECT user_id, true, 'heartbeat', last_hb, last_hb FROM up WHERE online_since = last_hb`.execute(
        db,
      );
    },
    async userIds() {
      const rows = await db.selectFrom('pulse').select('user_id').orderBy('user_id').execute();
      return rows.map((r) => Number(r.user_id));
    },
    async ageOf(userId) {
      const { rows } = await sql<{ age: number }>`
        SELECT extract(epoch FROM now() - last_hb)::float8 AS age FROM pulse WHERE user_id = ${userId}`.execute(
        db,
      );
      return rows[0]?.age;
    },
    async snapshot() {
      const { rows } = await sql<{ row: string }>`
        SELECT user_id::text || ' ' || last_hb::text AS row FROM pulse ORDER BY user_id`.execute(
        db,
      );
      return rows.map((r) => r.row);
    },
    async lockWaiters() {
      // On a connection of its own: the pool may be all taken by the waiting statements.
      const { rows } = await queryOnce<{ n: number }>(
        url,
        `SELECT count(*)::int AS n FROM pg_stat_activity
         WHERE datname = current_database() AND wait_event_type = 'Lock'`,
      );
      return rows[0]?.n ?? 0;
    },
  };
}

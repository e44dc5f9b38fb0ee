import { sql, type Kysely } from 'kysely';

/*
 * The rules every Pulse process and every DBA query must agree on, in one row, plus the comments
 * that make `\d+` explain the schema. Nothing here rewrites or scans `pulse`: CREATE TABLE and
 * CREATE VIEW touch new objects, COMMENT ON takes a SHARE UPDATE EXCLUSIVE lock on `pulse` (which
 * heartbeats' ROW EXCLUSIVE does not conflict with) for the few milliseconds of the statement.
 * See docs/lifecycle.md for the measured lock times on 1,000,000 rows.
 */
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema
    .createTable('pulse_settings')
    .addColumn('id', 'integer', (col) =>
      col
        .primaryKey()
        .defaultTo(1)
        .check(sql`id = 1`),
    )
    .addColumn('online_threshold_seconds', 'integer', (col) =>
      col
        .notNull()
        .defaultTo(20)
        .check(sql`online_threshold_seconds BETWEEN 1 AND 86400`),
    )
    .addColumn('last_seen_enabled', 'boolean', (col) => col.notNull().defaultTo(true))
    .addColumn('last_seen_retention_days', 'integer', (col) =>
      col
        .notNull()
        .defaultTo(30)
        .check(sql`last_seen_retention_days BETWEEN 1 AND 36500`),
    )
    .addColumn('updated_at', 'timestamptz', (col) => col.notNull().defaultTo(sql`now()`))
    .execute();
  await sql`INSERT INTO pulse_settings (id) VALUES (1)`.execute(db);

  // The online rule for SQL readers, the predicate Pulse's own queries use (lib/store/pulse-store.ts,
  // onlineSince). The threshold is an uncorrelated subquery: read once per query (an InitPlan),
  // so the scan's filter is the same plain comparison as with a literal interval, and stays
  // parallel (a join with the settings row would evaluate make_interval per row, measured ~2x).
  await sql`CREATE VIEW pulse_online AS
    SELECT user_id, last_hb
    FROM pulse
    WHERE last_hb > now() - (SELECT make_interval(secs => s.online_threshold_seconds)
                             FROM pulse_settings s WHERE s.id = 1)`.execute(db);

  const comments: Array<[string, string]> = [
    [
      'TABLE pulse',
      'Presence: one row per user who sent a heartbeat and has not been swept yet. Written by the Pulse API (POST /status/update upserts last_hb = now()); rows are deleted by the sweeper (last heartbeat older than greatest(SWEEP_OLDER_THAN_SECONDS, pulse_settings.online_threshold_seconds)) and by explicit offline, which copy last_hb into pulse_last_seen. A user is online when last_hb > now() - pulse_settings.online_threshold_seconds: SELECT * FROM pulse_online.',
    ],
    ['COLUMN pulse.user_id', "The application's user id (bigint, at most 2^53 - 1)."],
    [
      'COLUMN pulse.last_hb',
      "Time of the user's last heartbeat, by the database clock (now() of the upsert; client timestamps are ignored). Deliberately not indexed: an index would make every heartbeat a non-HOT update.",
    ],
    [
      'TABLE pulse_sweeper_lease',
      'At most one row (id = 1): which sweeper process owns the sweep in progress and until when. Taken, renewed in every batch transaction and released by the sweepers (lib/sweep-lease.ts); an expired lease may be taken by any sweeper.',
    ],
    ['COLUMN pulse_sweeper_lease.id', 'Always 1: there is one lease.'],
    [
      'COLUMN pulse_sweeper_lease.holder',
      'The sweeper holding the lease (host:pid:random); null when released.',
    ],
    ['COLUMN pulse_sweeper_lease.renewed_at', 'When the holder last took or renewed the lease.'],
    [
      'COLUMN pulse_sweeper_lease.expires_at',
      'The lease is free from this time on (renewed_at + the lease time-to-live).',
    ],
    [
      'TABLE pulse_settings',
      'One row (id = 1): the presence rules the API, the sweeper and SQL readers share; read live by every Pulse query. Written by npm run migrate (ONLINE_THRESHOLD_SECONDS, LAST_SEEN_ENABLED, LAST_SEEN_RETENTION_DAYS in its environment) or by a DBA with UPDATE; takes effect at once.',
    ],
    ['COLUMN pulse_settings.id', 'Always 1: there is one set of settings.'],
    [
      'COLUMN pulse_settings.online_threshold_seconds',
      'The online rule: a user is online when pulse.last_hb > now() - this many seconds. The sweeper never deletes a row younger than this, whatever its SWEEP_OLDER_THAN_SECONDS.',
    ],
    [
      'COLUMN pulse_settings.last_seen_enabled',
      'Whether going offline (sweep or explicit offline) records the last heartbeat in pulse_last_seen. Off: nothing new is recorded; existing entries age out.',
    ],
    [
      'COLUMN pulse_settings.last_seen_retention_days',
      'The sweeper deletes pulse_last_seen entries older than this many days.',
    ],
    ['COLUMN pulse_settings.updated_at', 'When npm run migrate last wrote these settings.'],
    [
      'VIEW pulse_online',
      'Users online right now by the shared rule (pulse_settings.online_threshold_seconds), judged by the database clock.',
    ],
    ['COLUMN pulse_online.user_id', 'A user online right now (pulse.user_id).'],
    ['COLUMN pulse_online.last_hb', "The user's last heartbeat (pulse.last_hb)."],
  ];
  for (const [object, text] of comments) {
    await sql`COMMENT ON ${sql.raw(object)} IS ${sql.lit(text)}`.execute(db);
  }
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`DROP VIEW pulse_online`.execute(db);
  await db.schema.dropTable('pulse_settings').execute();
  for (const object of [
    'TABLE pulse',
    'COLUMN pulse.user_id',
    'COLUMN pulse.last_hb',
    'TABLE pulse_sweeper_lease',
    'COLUMN pulse_sweeper_lease.id',
    'COLUMN pulse_sweeper_lease.holder',
    'COLUMN pulse_sweeper_lease.renewed_at',
    'COLUMN pulse_sweeper_lease.expires_at',
  ]) {
    await sql`COMMENT ON ${sql.raw(object)} IS NULL`.execute(db);
  }
}

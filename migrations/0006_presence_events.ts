import { sql, type Kysely } from 'kysely';

/*
 * The presence change log (docs/stream.md, "How changes are found"):
 * - pulse.online_since: non-null exactly while the user's last logged transition is `online`. No
 *   default and no index: adding it rewrites nothing, and heartbeats stay HOT updates. Rows online
 *   right now are marked (with their last heartbeat) so their next heartbeat logs nothing new.
 * - pulse_events: one row per transition, range-partitioned by day on `at` (retention drops whole
 *   partitions, no VACUUM). `tx` is the writer's transaction id: readers take what became visible
 *   between two snapshots, never `seq > cursor` (sequence values commit out of order).
 * - pulse_job_leases: which process runs a once-per-database job (the offline detector).
 * - pulse_settings.event_retention_days.
 * The partitions for yesterday to a week ahead are created here; the sweeper keeps them ahead
 * after that (lib/store/presence-log.ts). The default partition only catches what arrives when
 * none was created in time.
 */
const AHEAD_DAYS = 7;

export async function up(db: Kysely<any>): Promise<void> {
  await sql`ALTER TABLE pulse ADD COLUMN online_since timestamptz`.execute(db);
  await sql`UPDATE pulse SET online_since = last_hb
    WHERE last_hb > now() - (SELECT make_interval(secs => online_threshold_seconds)
                             FROM pulse_settings WHERE id = 1)`.execute(db);
  await sql`ALTER TABLE pulse_settings ADD COLUMN event_retention_days integer NOT NULL DEFAULT 7
    CHECK (event_retention_days BETWEEN 1 AND 3650)`.execute(db);

  await sql`CREATE TABLE pulse_events (
    seq bigserial NOT NULL,
    user_id bigint NOT NULL,
    online boolean NOT NULL,
    reason text NOT NULL CHECK (reason IN ('heartbeat', 'offline', 'threshold', 'sweep')),
    at timestamptz NOT NULL DEFAULT now(),
    last_seen timestamptz,
    tx xid8 NOT NULL DEFAULT pg_current_xact_id()
  ) PARTITION BY RANGE (at)`.execute(db);
  await sql`CREATE INDEX pulse_events_tx_idx ON pulse_events (tx)`.execute(db);
  await sql`CREATE TABLE pulse_events_default PARTITION OF pulse_events DEFAULT`.execute(db);
  for (let day = -1; day <= AHEAD_DAYS; day += 1) {
    const { rows } = await sql<{ name: string; from: string; to: string }>`
      SELECT 'pulse_events_' || to_char(d, 'YYYYMMDD') AS name,
             d::text AS from, (d + interval '1 day')::text AS to
      FROM (SELECT date_trunc('day', now() AT TIME ZONE 'UTC') + make_interval(days => ${day}) AS d) x`.execute(
      db,
    );
    const { name, from, to } = rows[0]!;
    await sql`CREATE TABLE IF NOT EXISTS ${sql.id(name)} PARTITION OF pulse_events
      FOR VALUES FROM (${sql.lit(`${from} UTC`)}) TO (${sql.lit(`${to} UTC`)})`.execute(db);
  }

  await sql`CREATE TABLE pulse_job_leases (
    job text PRIMARY KEY,
    holder text,
    renewed_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
  )`.execute(db);

  const comments: Array<[string, string]> = [
    [
      'COLUMN pulse.online_since',
      'Start of the current online session as the change log sees it: non-null exactly while the last pulse_events row of this user says online. Set by the heartbeat that brings the user online (same statement as its event), cleared by the offline detector when last_hb passes the threshold (same statement as its event). Not indexed: heartbeats stay HOT.',
    ],
    [
      'COLUMN pulse_settings.event_retention_days',
      'pulse_events partitions (one per UTC day) older than this many days are dropped by the sweeper.',
    ],
    [
      'TABLE pulse_events',
      'Presence change log: one row per online/offline transition, written in the statement that causes it (so a transition is here if and only if pulse.online_since flipped). Partitioned by day on at; old partitions are dropped (pulse_settings.event_retention_days). Read new rows by snapshot, not by seq: see docs/dbas.md.',
    ],
    [
      'COLUMN pulse_events.seq',
      'Insertion order. Per user it is the order of the transitions; across users a larger seq may commit first, so never tail with seq > cursor (use tx and pg_current_snapshot()).',
    ],
    ['COLUMN pulse_events.user_id', "The application's user id, as in pulse.user_id."],
    ['COLUMN pulse_events.online', 'true: the user came online; false: the user went offline.'],
    [
      'COLUMN pulse_events.reason',
      'heartbeat: a heartbeat (request or held stream) of a user not marked online; offline: POST /status/offline; threshold: the offline detector found last_hb older than the online threshold; sweep: the sweeper removed a row still marked online.',
    ],
    [
      'COLUMN pulse_events.at',
      'When the transition was logged (now() of the writing transaction).',
    ],
    [
      'COLUMN pulse_events.last_seen',
      'last_seen as a status read answers it right after the transition: the last heartbeat (null for offline/sweep when pulse_settings.last_seen_enabled is off).',
    ],
    [
      'COLUMN pulse_events.tx',
      'The writing transaction (pg_current_xact_id()): a reader holding the snapshot of its previous read takes rows with pg_visible_in_snapshot(tx, pg_current_snapshot()) AND NOT pg_visible_in_snapshot(tx, previous).',
    ],
    [
      'TABLE pulse_job_leases',
      'Jobs that run once per database (offline-detector): which process holds each and until when. Renewed by the holder; an expired lease may be taken by any process.',
    ],
    ['COLUMN pulse_job_leases.job', 'The job name (offline-detector).'],
    [
      'COLUMN pulse_job_leases.holder',
      'The process holding it (host:pid:random); null when released.',
    ],
    ['COLUMN pulse_job_leases.renewed_at', 'When the holder last took or renewed the lease.'],
    ['COLUMN pulse_job_leases.expires_at', 'The lease is free from this time on.'],
  ];
  for (const [object, text] of comments) {
    await sql`COMMENT ON ${sql.raw(object)} IS ${sql.lit(text)}`.execute(db);
  }
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`DROP TABLE pulse_job_leases`.execute(db);
  await sql`DROP TABLE pulse_events`.execute(db);
  await sql`ALTER TABLE pulse_settings DROP COLUMN event_retention_days`.execute(db);
  await sql`ALTER TABLE pulse DROP COLUMN online_since`.execute(db);
}

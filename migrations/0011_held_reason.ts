import { sql, type Kysely } from 'kysely';

/*
 * pulse_events.reason gains `held`: the online transition brought by a stream's held presence
 * (GET /status/stream?hold=true), told apart from a client's own heartbeat. The CHECK is replaced
 * NOT VALID (a moment's lock, no scan: the old rows satisfy the wider rule) and validated after,
 * which scans the partitions without blocking writers.
 */
const REASONS_BEFORE = ['heartbeat', 'offline', 'threshold', 'sweep'];
const REASONS_NOW = ['heartbeat', 'held', 'offline', 'threshold', 'sweep'];

async function allowReasons(db: Kysely<any>, reasons: string[]): Promise<void> {
  const list = sql.join(reasons.map((reason) => sql.lit(reason)));
  // Two statements: Citus refuses ADD CONSTRAINT with other subcommands (one transaction anyway).
  await sql`ALTER TABLE pulse_events DROP CONSTRAINT pulse_events_reason_check`.execute(db);
  await sql`ALTER TABLE pulse_events ADD CONSTRAINT pulse_events_reason_check
    CHECK (reason IN (${list})) NOT VALID`.execute(db);
  await sql`ALTER TABLE pulse_events VALIDATE CONSTRAINT pulse_events_reason_check`.execute(db);
}

export async function up(db: Kysely<any>): Promise<void> {
  await allowReasons(db, REASONS_NOW);
  await sql`COMMENT ON COLUMN pulse_events.reason IS ${sql.lit(
    "Why: heartbeat (a client's heartbeat brought the user online), held (a stream holding the user's presence did), offline (explicit POST /status/offline), threshold (the offline detector saw last_hb pass the threshold), sweep (the sweeper deleted a row still marked online).",
  )}`.execute(db);
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`UPDATE pulse_events SET reason = 'heartbeat' WHERE reason = 'held'`.execute(db);
  await allowReasons(db, REASONS_BEFORE);
}

import { sql, type Kysely } from 'kysely';
import { distributeUserKeyedTables } from '../lib/citus/citus-layout.ts';

/*
 * Who may see a user can change while nobody's presence does: the user turns invisible or visible
 * again, or the application's rule (pulse_visible_users) changes its answer, e.g. an unfriending.
 * Live streams are fed by the change log, so such a change must be in a log too: one row per
 * user whose audience changed, read by the streams with the same snapshot rule as pulse_events.
 * Not in pulse_events: that table holds presence transitions only (webhooks and DBAs' session
 * queries read it as such).
 *
 * Rows matter for seconds (until every API process has read them); the sweeper deletes those
 * older than an hour, a few rows per privacy toggle or friendship change.
 */
export async function up(db: Kysely<any>): Promise<void> {
  await sql`CREATE TABLE pulse_visibility_changes (
    user_id bigint NOT NULL,
    reason text NOT NULL CHECK (reason IN ('privacy', 'rule')),
    at timestamptz NOT NULL DEFAULT now(),
    tx xid8 NOT NULL DEFAULT pg_current_xact_id()
  )`.execute(db);
  await sql`CREATE INDEX pulse_visibility_changes_tx_idx ON pulse_visibility_changes (tx)`.execute(
    db,
  );
  await sql`CREATE INDEX pulse_visibility_changes_at_idx ON pulse_visibility_changes (at)`.execute(
    db,
  );

  // The application's trigger on its own table calls this in the transaction that changes who
  // sees whom. Only online users get a row: an offline user reads as offline to everyone anyway.
  await sql`CREATE FUNCTION pulse_visibility_changed(user_ids bigint[]) RETURNS void
    LANGUAGE sql AS $$
      INSERT INTO pulse_visibility_changes (user_id, reason)
      SELECT user_id, 'rule' FROM pulse
      WHERE user_id = ANY(user_ids) AND online_since IS NOT NULL
    $$`.execute(db);

  const comments: Array<[string, string]> = [
    [
      'TABLE pulse_visibility_changes',
      'Users whose audience changed while their presence did not: they turned invisible or visible (reason privacy), or the application said its rule pulse_visible_users may now answer differently for them (reason rule, via pulse_visibility_changed). Live streams re-evaluate what each watcher may see of these users. Not transitions: those are in pulse_events. Rows older than an hour are deleted by the sweeper.',
    ],
    ['COLUMN pulse_visibility_changes.user_id', 'The user whose audience changed.'],
    [
      'COLUMN pulse_visibility_changes.reason',
      'privacy: the user changed invisible mode (PUT /status/privacy). rule: the application called pulse_visibility_changed.',
    ],
    ['COLUMN pulse_visibility_changes.at', 'When (database clock).'],
    [
      'COLUMN pulse_visibility_changes.tx',
      "The writing transaction's id: readers take the rows that became visible between two snapshots, as for pulse_events.tx.",
    ],
    [
      'FUNCTION pulse_visibility_changed(bigint[])',
      "Call it (for instance from a trigger on the application's friends table) in the transaction that changes who may see these users: open live streams re-apply pulse_visible_users to them within one read of the log. Users not online are skipped.",
    ],
  ];
  for (const [object, text] of comments) {
    await sql`COMMENT ON ${sql.raw(object)} IS ${sql.lit(text)}`.execute(db);
  }
  await distributeUserKeyedTables(db);
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`DROP FUNCTION pulse_visibility_changed(bigint[])`.execute(db);
  await db.schema.dropTable('pulse_visibility_changes').execute();
}

import { sql, type Kysely } from 'kysely';

/*
 * When each user who went offline was last around. Written only when a row leaves `pulse` (the
 * sweeper's DELETE ... RETURNING, explicit offline), in the same statement, so heartbeats pay
 * nothing. The index on last_seen lets the sweeper trim old entries oldest first without scanning
 * the table; its cost falls on offline events, not heartbeats. A new, empty table: no lock on
 * `pulse` beyond the comment's. Citus: co-located with `pulse`, distributed by user_id.
 */
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema
    .createTable('pulse_last_seen')
    .addColumn('user_id', 'bigint', (col) => col.primaryKey())
    .addColumn('last_seen', 'timestamptz', (col) => col.notNull())
    .execute();
  await db.schema
    .createIndex('pulse_last_seen_last_seen_idx')
    .on('pulse_last_seen')
    .column('last_seen')
    .execute();
  const comments: Array<[string, string]> = [
    [
      'TABLE pulse_last_seen',
      'Last seen: for each user whose pulse row was removed (swept, or explicit offline), the time of their last heartbeat. Written in the same statement as the delete; a user who comes back keeps the entry until their next offline overwrites it (the API answers pulse.last_hb while a row exists). Entries older than pulse_settings.last_seen_retention_days are deleted by the sweeper. Current last seen of anyone: coalesce(pulse.last_hb, pulse_last_seen.last_seen).',
    ],
    ['COLUMN pulse_last_seen.user_id', "The application's user id, as in pulse.user_id."],
    [
      'COLUMN pulse_last_seen.last_seen',
      "The user's last heartbeat (pulse.last_hb when the row was removed), by the database clock.",
    ],
  ];
  for (const [object, text] of comments) {
    await sql`COMMENT ON ${sql.raw(object)} IS ${sql.lit(text)}`.execute(db);
  }
}

export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.dropTable('pulse_last_seen').execute();
}

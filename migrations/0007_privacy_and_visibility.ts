import { sql, type Kysely } from 'kysely';
import { distributeUserKeyedTables } from '../lib/citus/citus-layout.ts';

/*
 * Each user's own presence privacy (issue 24): invisible mode and hidden last seen, set by the user
 * through the API and applied by every status answer and stream event. A new, empty table keyed by
 * user_id (Citus: distributed and co-located with pulse); nothing here touches `pulse`.
 *
 * Who may see whom is the application's rule, not a table of Pulse's: the operator creates the
 * function pulse_visible_users(viewer bigint, targets bigint[]) RETURNS SETOF bigint
 * (docs/security.md); while it does not exist, everyone sees everyone.
 */
export async function up(db: Kysely<any>): Promise<void> {
  await sql`CREATE TABLE pulse_privacy (
    user_id bigint PRIMARY KEY,
    invisible boolean NOT NULL DEFAULT false,
    hide_last_seen boolean NOT NULL DEFAULT false,
    invisible_since timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
  )`.execute(db);
  const comments: Array<[string, string]> = [
    [
      'TABLE pulse_privacy',
      "Each user's own presence privacy, set by the user through PUT /status/privacy (token sub). No row: visible, last seen shown. Applied by every status answer and stream event, to every reader. Who may see whom at all is the operator's function pulse_visible_users(viewer bigint, targets bigint[]), when it exists (docs/security.md).",
    ],
    ['COLUMN pulse_privacy.user_id', "The application's user id, as in pulse.user_id."],
    [
      'COLUMN pulse_privacy.invisible',
      'Invisible mode: the user reads as offline to everyone while their heartbeats and streams go on; last seen reads as invisible_since at the latest.',
    ],
    [
      'COLUMN pulse_privacy.hide_last_seen',
      'Last seen hidden: every answer about this user has last_seen null.',
    ],
    [
      'COLUMN pulse_privacy.invisible_since',
      'When the user turned invisible (by the database clock); null while visible. Readers see no last seen later than this.',
    ],
    ['COLUMN pulse_privacy.updated_at', 'When the user last changed these settings.'],
  ];
  for (const [object, text] of comments) {
    await sql`COMMENT ON ${sql.raw(object)} IS ${sql.lit(text)}`.execute(db);
  }
  await distributeUserKeyedTables(db);
}

export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.dropTable('pulse_privacy').execute();
}

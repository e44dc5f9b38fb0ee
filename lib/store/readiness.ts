import { sql, type Kysely } from 'kysely';
import { findMisplacedTables } from '../citus/citus-layout.ts';
import { isDatabaseUnavailable } from '../infra/db.ts';
import { createMigrator } from './migrator.ts';

export type Readiness = { ready: true } | { ready: false; reason: string };

/** Every table the API and the sweeper read or write (lib/store/schema.ts). */
const REQUIRED_TABLES = [
  'pulse',
  'pulse_sweeper_lease',
  'pulse_settings',
  'pulse_last_seen',
  'pulse_events',
  'pulse_job_leases',
];

/**
 * Ready when the database answers, every migration in migrations/ is applied, every table Pulse
 * uses exists (a table dropped or renamed after its migration ran is not ready either) and, on a
 * Citus database, every table keyed by user_id is distributed and co-located with `pulse`.
 */
export async function checkReadiness<DB>(db: Kysely<DB>): Promise<Readiness> {
  try {
    await sql`SELECT 1`.execute(db);
    const pending = (await createMigrator(db).getMigrations()).filter((m) => !m.executedAt);
    if (pending.length > 0) {
      return {
        ready: false,
        reason: `migrations pending: ${pending.map((m) => m.name).join(', ')}`,
      };
    }
    // to_regclass follows the connection's search_path, as the application's own queries do.
    const { rows } = await sql<{ name: string }>`
      SELECT name FROM unnest(${REQUIRED_TABLES}::text[]) AS name
      WHERE to_regclass(quote_ident(name)) IS NULL`.execute(db);
    if (rows.length > 0) {
      return { ready: false, reason: `tables missing: ${rows.map((r) => r.name).join(', ')}` };
    }
    const misplaced = await findMisplacedTables(db);
    if (misplaced.length > 0) {
      return { ready: false, reason: `${misplaced.join('; ')} (run npm run migrate)` };
    }
    return { ready: true };
  } catch (error) {
    if (isDatabaseUnavailable(error)) return { ready: false, reason: 'database unavailable' };
    return {
      ready: false,
      reason: error instanceof Error ? error.message : 'readiness check failed',
    };
  }
}

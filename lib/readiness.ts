import { sql, type Kysely } from 'kysely';
import { findMisplacedTables } from './citus-layout.ts';
import { isDatabaseUnavailable } from './db.ts';
import { createMigrator } from './migrator.ts';

export type Readiness = { ready: true } | { ready: false; reason: string };

/**
 * Ready when the database answers, every migration in migrations/ is applied and, on a Citus
 * database, every table keyed by user_id is distributed and co-located with `pulse`.
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

import { sql, type Kysely } from 'kysely';
import { isDatabaseUnavailable } from './db.ts';
import { createMigrator } from './migrator.ts';

export type Readiness = { ready: true } | { ready: false; reason: string };

/** Ready when the database answers and every migration in migrations/ is applied. */
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
    return { ready: true };
  } catch (error) {
    if (isDatabaseUnavailable(error)) return { ready: false, reason: 'database unavailable' };
    return {
      ready: false,
      reason: error instanceof Error ? error.message : 'readiness check failed',
    };
  }
}

/**
 * Leases for jobs that should run in one process per database (the offline detector), in
 * `pulse_job_leases`: one row per job, holder + expires_at, renewed by the holder. A row carries
 * ownership with no session state, so it works through PgBouncer in transaction mode, and a
 * crashed holder's lease simply expires. The jobs under these leases are idempotent (two holders
 * at once would do the same work twice, never log a transition twice): the lease saves work, it
 * does not guard correctness, so unlike the sweep lease no advisory lock is taken.
 */
import { sql } from 'kysely';
import type { Executor } from './pulse-store.ts';

/**
 * Takes or renews `job` for `holder` when it is free, expired, or already `holder`'s. One
 * statement, never waits. Returns true when `holder` owns it for the next `ttlSeconds`.
 */
export async function tryAcquireJobLease(
  db: Executor,
  job: string,
  holder: string,
  ttlSeconds: number,
): Promise<boolean> {
  const { rows } = await sql<{ holder: string }>`
    INSERT INTO pulse_job_leases (job, holder, renewed_at, expires_at)
    VALUES (${job}, ${holder}, now(), now() + make_interval(secs => ${ttlSeconds}))
    ON CONFLICT (job) DO UPDATE
      SET holder = EXCLUDED.holder, renewed_at = EXCLUDED.renewed_at, expires_at = EXCLUDED.expires_at
      WHERE pulse_job_leases.expires_at <= EXCLUDED.renewed_at
         OR pulse_job_leases.holder = EXCLUDED.holder
    RETURNING holder`.execute(db);
  return rows.length === 1;
}

/** Gives `job` up so another process need not wait for it to expire. No-op if not `holder`'s. */
export async function releaseJobLease(db: Executor, job: string, holder: string): Promise<void> {
  await db
    .updateTable('pulse_job_leases')
    .set({ holder: null, expires_at: sql<Date>`now()` })
    .where('job', '=', job)
    .where('holder', '=', holder)
    .execute();
}

/** Who holds `job` and until when (for tests and logs); undefined before anyone took it. */
export async function readJobLease(
  db: Executor,
  job: string,
): Promise<{ holder: string | null; expiresAt: Date } | undefined> {
  const row = await db
    .selectFrom('pulse_job_leases')
    .select(['holder', 'expires_at'])
    .where('job', '=', job)
    .executeTakeFirst();
  return row && { holder: row.holder, expiresAt: row.expires_at };
}

/**
 * The holders of the unexpired leases whose job starts with `prefix`, sorted: the live members of
 * a group of processes that each renew a lease of their own (lib/presence/group-detectors.ts).
 */
export async function listLiveHolders(db: Executor, prefix: string): Promise<string[]> {
  const rows = await db
    .selectFrom('pulse_job_leases')
    .select('holder')
    .where('job', 'like', `${prefix}%`)
    .where('expires_at', '>', sql<Date>`now()`)
    .where('holder', 'is not', null)
    .orderBy('holder')
    .execute();
  return rows.map((row) => row.holder!);
}

/** Deletes the leases whose job starts with `prefix` and that expired over an hour ago. */
export async function deleteLongExpiredLeases(db: Executor, prefix: string): Promise<void> {
  await db
    .deleteFrom('pulse_job_leases')
    .where('job', 'like', `${prefix}%`)
    .where('expires_at', '<', sql<Date>`now() - interval '1 hour'`)
    .execute();
}

/**
 * The SQL that keeps "one active sweeper" true however many sweeper sidecars run.
 *
 * Two mechanisms, each covering what the other cannot:
 *
 * - A lease row (`pulse_sweeper_lease`, id = 1: holder + expires_at) says who owns the sweep that
 *   is in progress. A sweep is many short transactions, and a transaction-level advisory lock ends
 *   with each of them, so something must carry ownership from one batch to the next. A row does,
 *   with no session state (PgBouncer transaction mode is fine), and a crashed holder's lease simply
 *   expires after the TTL.
 * - `pg_try_advisory_xact_lock(SWEEP_LOCK_KEY)` is taken by every acquire attempt and by every
 *   batch transaction (blocking there: the only other holder can be a one-statement acquire
 *   attempt). While the owner is inside a batch, a contender's try-lock answers false at once, so
 *   contenders never queue behind the lease row's lock; they skip the tick.
 *
 * Every batch renews the lease in its own transaction, before its DELETE. If the lease was lost
 * (the owner stalled past the TTL and another sweeper took over), the renewal matches no row, the
 * batch is rolled back and the sweep stops: two sweepers can never commit interleaved batches.
 *
 * Citus: the lease table stays a plain (local or reference) table on the coordinator; the ON
 * CONFLICT clause still uses only columns and EXCLUDED.* with immutable operators.
 */
import { sql, type Kysely, type Transaction } from 'kysely';
import type { Database } from './schema.ts';

/** Fixed advisory-lock key of the sweep ("PULSE" in ASCII); advisory locks are per database. */
export const SWEEP_LOCK_KEY = 0x50554c5345;

const LEASE_ID = 1;

/**
 * Takes the lease for `holder` when it is free, expired, or already held by `holder`, unless
 * another sweeper is inside a sweep transaction right now. One statement, never waits.
 * Returns true when `holder` owns the lease for the next `ttlSeconds`.
 */
export async function tryAcquireSweepLease(
  db: Kysely<Database>,
  holder: string,
  ttlSeconds: number,
): Promise<boolean> {
  const { rows } = await sql<{ holder: string }>`
    INSERT INTO pulse_sweeper_lease (id, holder, renewed_at, expires_at)
    SELECT ${LEASE_ID}, ${holder}, now(), now() + make_interval(secs => ${ttlSeconds})
    WHERE pg_try_advisory_xact_lock(${SWEEP_LOCK_KEY}::bigint)
    ON CONFLICT (id) DO UPDATE
      SET holder = EXCLUDED.holder, renewed_at = EXCLUDED.renewed_at, expires_at = EXCLUDED.expires_at
      WHERE pulse_sweeper_lease.expires_at <= EXCLUDED.renewed_at
         OR pulse_sweeper_lease.holder = EXCLUDED.holder
    RETURNING holder`.execute(db);
  return rows.length === 1;
}

/**
 * Inside a batch transaction: takes the advisory lock for the rest of the transaction and
 * extends the lease. Returns false when `holder` no longer owns the lease (the caller must roll
 * back and stop sweeping).
 */
export async function renewSweepLease(
  trx: Transaction<Database>,
  holder: string,
  ttlSeconds: number,
): Promise<boolean> {
  await sql`SELECT pg_advisory_xact_lock(${SWEEP_LOCK_KEY}::bigint)`.execute(trx);
  const result = await trx
    .updateTable('pulse_sweeper_lease')
    .set({
      renewed_at: sql<Date>`now()`,
      expires_at: sql<Date>`now() + make_interval(secs => ${ttlSeconds})`,
    })
    .where('id', '=', LEASE_ID)
    .where('holder', '=', holder)
    .executeTakeFirst();
  return Number(result.numUpdatedRows) === 1;
}

/** Gives the lease up so the next sweeper need not wait for it to expire. No-op if not ours. */
export async function releaseSweepLease(db: Kysely<Database>, holder: string): Promise<void> {
  await db
    .updateTable('pulse_sweeper_lease')
    .set({ holder: null, expires_at: sql<Date>`now()` })
    .where('id', '=', LEASE_ID)
    .where('holder', '=', holder)
    .execute();
}

export interface SweepLeaseState {
  holder: string | null;
  expiresAt: Date;
}

/** Who holds the lease (for logs and tests); undefined before any sweeper took it. */
export async function readSweepLease(db: Kysely<Database>): Promise<SweepLeaseState | undefined> {
  const row = await db
    .selectFrom('pulse_sweeper_lease')
    .select(['holder', 'expires_at'])
    .where('id', '=', LEASE_ID)
    .executeTakeFirst();
  return row && { holder: row.holder, expiresAt: row.expires_at };
}

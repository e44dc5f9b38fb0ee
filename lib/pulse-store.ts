/**
 * Every SQL statement that touches `pulse`. Each function takes the Kysely instance or transaction
 * to run on, so callers decide about transactions. Nothing here knows about HTTP or timers.
 *
 * Citus compatibility (see README): the upsert sets `last_hb = EXCLUDED.last_hb` with `now()` in
 * the inserted SELECT list, and the sweep walks primary-key ranges, never ctid.
 */
import { sql, type Kysely, type RawBuilder } from 'kysely';
import type { Database } from './schema.ts';

export type Executor = Kysely<Database>;

/** Sorted and de-duplicated: one statement may not touch a row twice, and a fixed lock order
 * means two concurrent upserts can never deadlock each other. */
export function normalizeUserIds(userIds: Iterable<number>): number[] {
  return [...new Set(userIds)].sort((a, b) => a - b);
}

/** Marks every given user as seen now (by the database clock), in one statement. */
export async function recordHeartbeats(db: Executor, userIds: Iterable<number>): Promise<void> {
  const ids = normalizeUserIds(userIds);
  if (ids.length === 0) return;
  await db
    .insertInto('pulse')
    .columns(['user_id', 'last_hb'])
    .expression(
      db
        .selectFrom(sql<{ id: string }>`unnest(${ids}::bigint[])`.as('hb'))
        .select([sql<number>`hb`.as('user_id'), sql<Date>`now()`.as('last_hb')]),
    )
    .onConflict((oc) =>
      oc.column('user_id').doUpdateSet({ last_hb: (eb) => eb.ref('excluded.last_hb') }),
    )
    .execute();
}

/**
 * THE online rule, in one place: the row's last heartbeat is newer than `thresholdSeconds` by the
 * database clock. Every statement that judges online-ness (status reads, change detection) uses it.
 */
export function isOnlineSql(thresholdSeconds: number): RawBuilder<boolean> {
  return sql<boolean>`last_hb > now() - make_interval(secs => ${thresholdSeconds})`;
}

/**
 * The subset of `userIds` that is online. Also the stream's change-detection statement
 * (lib/presence-feed.ts): a primary-key lookup per id, valid on a Citus-distributed `pulse`.
 */
export async function findOnlineUserIds(
  db: Executor,
  userIds: readonly number[],
  thresholdSeconds: number,
): Promise<Set<number>> {
  const ids = normalizeUserIds(userIds);
  if (ids.length === 0) return new Set();
  const rows = await db
    .selectFrom('pulse')
    .select('user_id')
    .where(sql<boolean>`user_id = ANY(${ids}::bigint[])`)
    .where(isOnlineSql(thresholdSeconds))
    .execute();
  return new Set(rows.map((row) => Number(row.user_id)));
}

/** What every status answer says about one user: POST /status/batch, the stream's events. */
export interface UserStatus {
  user_id: number;
  is_online: boolean;
}

/** One status per requested id, in request order, duplicates answered as given. */
export async function readStatuses(
  db: Executor,
  userIds: readonly number[],
  thresholdSeconds: number,
): Promise<UserStatus[]> {
  const online = await findOnlineUserIds(db, userIds, thresholdSeconds);
  return userIds.map((id) => ({ user_id: id, is_online: online.has(id) }));
}

/** Explicit offline: the users are offline for every reader as soon as this commits. */
export async function setOffline(db: Executor, userIds: readonly number[]): Promise<void> {
  const ids = normalizeUserIds(userIds);
  if (ids.length === 0) return;
  await db
    .deleteFrom('pulse')
    .where(sql<boolean>`user_id = ANY(${ids}::bigint[])`)
    .execute();
}

export interface SweepBatchResult {
  /** Rows deleted by this batch. */
  deleted: number;
  /** The highest user_id this batch covered; the next batch starts after it. Null when done. */
  nextCursor: string | null;
}

/**
 * Deletes expired rows among the next `batchSize` user ids after `cursor` (a primary-key range,
 * so the transaction is short and the staleness check stays inside the DELETE: a row refreshed
 * while the sweep runs is never removed).
 */
export async function sweepExpiredBatch(
  db: Executor,
  options: { cursor: string | null; batchSize: number; olderThanSeconds: number },
): Promise<SweepBatchResult> {
  const after = options.cursor ?? '0';
  const upper = await db
    .selectFrom((eb) =>
      eb
        .selectFrom('pulse')
        .select('user_id')
        .where('user_id', '>', sql<string>`${after}::bigint`)
        .orderBy('user_id')
        .limit(options.batchSize)
        .as('batch'),
    )
    .select((eb) => eb.fn.max('batch.user_id').as('last_id'))
    .executeTakeFirst();
  const lastId = upper?.last_id ?? null;
  if (lastId === null) return { deleted: 0, nextCursor: null };

  const result = await db
    .deleteFrom('pulse')
    .where('user_id', '>', sql<string>`${after}::bigint`)
    .where('user_id', '<=', sql<string>`${lastId}::bigint`)
    .where('last_hb', '<', sql<Date>`now() - make_interval(secs => ${options.olderThanSeconds})`)
    .executeTakeFirst();
  return { deleted: Number(result.numDeletedRows), nextCursor: String(lastId) };
}

/**
 * Makes `pulse` UNLOGGED (no WAL: faster writes, but emptied after a crash and not replicated)
 * or LOGGED, whichever is asked. Returns true when it had to change the table.
 */
export async function setPulseTableUnlogged(db: Executor, unlogged: boolean): Promise<boolean> {
  const { rows } = await sql<{ relpersistence: string }>`
    SELECT relpersistence FROM pg_class WHERE oid = 'pulse'::regclass`.execute(db);
  const isUnlogged = rows[0]?.relpersistence === 'u';
  if (isUnlogged === unlogged) return false;
  await sql`ALTER TABLE pulse SET ${sql.raw(unlogged ? 'UNLOGGED' : 'LOGGED')}`.execute(db);
  return true;
}

/**
 * Every SQL statement that touches `pulse`. Each function takes the Kysely instance or transaction
 * to run on, so callers decide about transactions. Nothing here knows about HTTP or timers.
 *
 * Citus compatibility (see README): the upsert sets `last_hb = EXCLUDED.last_hb` with `now()` in
 * the inserted SELECT list, and the sweep walks primary-key ranges, never ctid.
 */
import { sql, type Kysely, type RawBuilder } from 'kysely';
import type { Database } from './schema.ts';
import type { ShardRouter } from './shard-routing.ts';

export type Executor = Kysely<Database>;

/** Sorted and de-duplicated: one statement may not touch a row twice, and a fixed lock order
 * means two concurrent upserts can never deadlock each other. */
export function normalizeUserIds(userIds: Iterable<number>): number[] {
  return [...new Set(userIds)].sort((a, b) => a - b);
}

/**
 * Marks every given user as seen now (by the database clock). One statement; with a `router` on
 * Citus, one statement per shard instead (see below, and lib/shard-routing.ts).
 */
export async function recordHeartbeats(
  db: Executor,
  userIds: Iterable<number>,
  router?: ShardRouter,
): Promise<void> {
  const ids = normalizeUserIds(userIds);
  if (ids.length === 0) return;
  const groups = router ? await router.group(ids) : null;
  if (groups === null) {
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
    return;
  }
  // Citus: an INSERT ... SELECT is run through the coordinator (its rows are pulled there, then
  // pushed to the shards in a second step), while a multi-row VALUES whose ids all live on one
  // shard is routed there as it is. Measured with 32 shards: about 2x the heartbeats per second.
  // Each statement touches one shard in sorted id order, so concurrent writers cannot deadlock.
  await Promise.all(
    groups.map((group) =>
      db
        .insertInto('pulse')
        .values(group.map((id) => ({ user_id: id, last_hb: sql<Date>`now()` })))
        .onConflict((oc) =>
          oc.column('user_id').doUpdateSet({ last_hb: (eb) => eb.ref('excluded.last_hb') }),
        )
        .execute(),
    ),
  );
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
 * With a `router` on Citus, one statement per shard, each with only that shard's ids (see
 * lib/shard-routing.ts); otherwise, and always on plain PostgreSQL, one statement.
 */
export async function findOnlineUserIds(
  db: Executor,
  userIds: readonly number[],
  thresholdSeconds: number,
  router?: ShardRouter,
): Promise<Set<number>> {
  const ids = normalizeUserIds(userIds);
  if (ids.length === 0) return new Set();
  const groups = (router && (await router.group(ids))) ?? [ids];
  const found = await Promise.all(
    groups.map((group) =>
      db
        .selectFrom('pulse')
        .select('user_id')
        .where(sql<boolean>`user_id = ANY(${group}::bigint[])`)
        .where(isOnlineSql(thresholdSeconds))
        .execute(),
    ),
  );
  return new Set(found.flat().map((row) => Number(row.user_id)));
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

  const deleted = await sweepExpiredRange(db, {
    after,
    upTo: String(lastId),
    olderThanSeconds: options.olderThanSeconds,
  });
  return { deleted, nextCursor: String(lastId) };
}

/**
 * Deletes the expired rows with `after < user_id <= upTo`. The staleness check is inside the
 * DELETE, so a row refreshed while the sweep runs is never removed. On Citus this goes to every
 * shard, each of which walks only that key range of its primary key.
 */
export async function sweepExpiredRange(
  db: Executor,
  options: { after: string; upTo: string; olderThanSeconds: number },
): Promise<number> {
  const result = await db
    .deleteFrom('pulse')
    .where('user_id', '>', sql<string>`${options.after}::bigint`)
    .where('user_id', '<=', sql<string>`${options.upTo}::bigint`)
    .where('last_hb', '<', sql<Date>`now() - make_interval(secs => ${options.olderThanSeconds})`)
    .executeTakeFirst();
  return Number(result.numDeletedRows);
}

export interface UserIdSpace {
  /** Lowest and highest user_id in `pulse`, as decimal strings (bigint). */
  min: string;
  max: string;
  rows: number;
}

/**
 * The span of user ids in `pulse` and how many rows it holds (null when empty): on Citus the
 * sweep cuts this span into key ranges of about SWEEP_BATCH_SIZE rows each. One aggregate that
 * every shard answers by itself.
 */
export async function measureUserIdSpace(db: Executor): Promise<UserIdSpace | null> {
  const row = await db
    .selectFrom('pulse')
    .select((eb) => [
      sql<string | null>`min(user_id)::text`.as('min'),
      sql<string | null>`max(user_id)::text`.as('max'),
      eb.fn.countAll<string>().as('rows'),
    ])
    .executeTakeFirst();
  if (!row || row.min === null || row.max === null) return null;
  return { min: row.min, max: row.max, rows: Number(row.rows) };
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

/**
 * Every statement on the presence change log (`pulse_events`) except the writes that cause
 * transitions, which sit beside their causes in pulse-store.ts (heartbeat, explicit offline, sweep).
 *
 * Reading the log: sequence values are taken at insert and commit out of order, so a reader that
 * takes `seq > cursor` can pass a row whose transaction commits later and lose it. Readers keep
 * instead the snapshot of their previous read (PgQ's ticks): each read takes the statement's own
 * snapshot and returns the rows whose writing transaction (`tx`) is visible in it but was not in
 * the previous one. A row still in flight at one read is invisible to both the previous and the
 * current snapshot's "visible" side until it commits, and then shows up exactly once.
 * "Not visible in the previous snapshot" is written as what it means, `tx >= xmax(previous) OR tx
 * IN xip(previous)`, with both taken from the cursor as constants: two index lookups on `tx` per
 * partition. The plain `tx >= xmin(previous)` range would rescan every event since the oldest
 * transaction running anywhere on the server.
 */
import { sql } from 'kysely';
import type { ShardRouter } from '../citus/shard-routing.ts';
import {
  deviceColumns,
  deviceSummary,
  normalizeUserIds,
  privacyLastSeen,
  type DeviceSummary,
  type Executor,
} from './pulse-store.ts';

export type EventReason = 'heartbeat' | 'held' | 'offline' | 'threshold' | 'sweep';

export interface PresenceEvent {
  /** Insertion order (bigint as a string); per user, the order of the transitions. */
  seq: string;
  userId: number;
  online: boolean;
  reason: EventReason;
  /** last_seen as a status read answers it right after the transition. */
  lastSeen: Date | null;
  /** When the transition was logged (now() of the writing transaction). */
  at: Date;
}

export interface EventRead {
  /** The snapshot of this read (pg_snapshot as text): the next read's cursor. */
  snapshot: string;
  /** The rows that became visible since the cursor, in seq order. */
  events: PresenceEvent[];
  /**
   * Citus: why a node could not be read. Its rows are read, in order, by a later read from the
   * returned cursor, which keeps that node's part as it was.
   */
  failures?: unknown[];
}

/** A cursor to start reading from: everything committed before now is behind it. */
export async function currentEventCursor(db: Executor): Promise<string> {
  const { rows } = await sql<{ snapshot: string }>`
    SELECT pg_current_snapshot()::text AS snapshot`.execute(db);
  return rows[0]!.snapshot;
}

/**
 * Where a read of the log looks: the tables themselves or, on Citus, one co-located shard of
 * each (lib/store/node-change-log.ts), by name.
 */
export interface LogTables {
  events: string;
  visibility: string;
  pulse: string;
  lastSeen: string;
  privacy: string;
  /** The settings row's table (on Citus, the node's copy of the reference table). */
  settings: string;
}

export const WHOLE_LOG: LogTables = {
  events: 'pulse_events',
  visibility: 'pulse_visibility_changes',
  pulse: 'pulse',
  lastSeen: 'pulse_last_seen',
  privacy: 'pulse_privacy',
  settings: 'pulse_settings',
};

/**
 * What one statement reads: the log's tables (plain PostgreSQL) or the shards one Citus node
 * holds, and then only the rows whose `tx` is that node's (`tx_node`, migration 0014).
 */
export interface LogScope {
  tables: readonly LogTables[];
  node?: number;
}

const WHOLE_SCOPE: LogScope = { tables: [WHOLE_LOG] };

/** The snapshot rule for one table's rows (alias `alias`), against `cur.s`. */
function newSinceCursor(alias: string, cursor: string, node: number | undefined) {
  const { xmax, xip } = snapshotBounds(cursor);
  const tx = sql.ref(`${alias}.tx`);
  return sql`(${tx} >= ${xmax}::xid8 OR ${tx} = ANY(${xip}::xid8[]))
    AND pg_visible_in_snapshot(${tx}, cur.s)
    ${node === undefined ? sql`` : sql`AND ${sql.ref(`${alias}.tx_node`)} = ${node}::int`}`;
}

/** All of `scope`'s parts, one per table (or shard), as one UNION ALL. */
function acrossScope(scope: LogScope, part: (tables: LogTables) => ReturnType<typeof sql>) {
  return sql.join(
    scope.tables.map((tables) => sql`(${part(tables)})`),
    sql` UNION ALL `,
  );
}

/**
 * The events committed after `cursor` (a snapshot from this function or currentEventCursor) and
 * before this statement started, with the new cursor. One statement: its snapshot is the one
 * pg_current_snapshot() returns, so the rows read and the cursor agree. Works behind PgBouncer in
 * transaction mode (no session state).
 */
export async function readEventsSince(
  db: Executor,
  cursor: string,
  scope: LogScope = WHOLE_SCOPE,
): Promise<EventRead> {
  const { rows } = await sql<{
    snapshot: string;
    seq: string | null;
    user_id: string | null;
    online: boolean | null;
    reason: EventReason | null;
    last_seen: Date | null;
    at: Date | null;
  }>`
    WITH cur AS (SELECT pg_current_snapshot() AS s)
    SELECT cur.s::text AS snapshot, e.seq, e.user_id, e.online, e.reason, e.last_seen, e.at
    FROM cur LEFT JOIN LATERAL (${acrossScope(
      scope,
      (t) => sql`
      SELECT seq, user_id, online, reason, last_seen, at FROM ${sql.table(t.events)} e
      WHERE ${newSinceCursor('e', cursor, scope.node)}`,
    )}) e ON true
    ORDER BY e.seq`.execute(db);
  const events: PresenceEvent[] = [];
  for (const row of rows) {
    if (row.seq === null) continue;
    events.push({
      seq: row.seq,
      userId: Number(row.user_id),
      online: row.online!,
      reason: row.reason!,
      lastSeen: row.last_seen,
      at: row.at!,
    });
  }
  return { snapshot: rows[0]!.snapshot, events };
}

/**
 * pg_snapshot's text form is xmin:xmax:xip,... The bounds go into statements as constants: an
 * InitPlan's array is not used for the index, and each read would scan the partitions.
 */
function snapshotBounds(cursor: string): { xmax: string; xip: string[] } {
  const [, xmax, xipList] = cursor.split(':');
  if (xmax === undefined || xipList === undefined) throw new Error(`not a snapshot: ${cursor}`);
  return { xmax, xip: xipList === '' ? [] : xipList.split(',') };
}

/**
 * One change a live stream must look at: a transition (pulse_events) or a change of who may see
 * the user (pulse_visibility_changes), with the user's privacy as of the read.
 */
export interface WatchedChange {
  userId: number;
  /** False: a transition. True: the user's audience changed, their presence did not. */
  audienceOnly: boolean;
  /** Online by the log after this change (for an audience change: as of the read). */
  online: boolean;
  /** Invisible mode as of the read: everyone is told offline. */
  invisible: boolean;
  /** last_seen as readers are shown it (privacy applied) right after the change. */
  shownLastSeen: Date | null;
  /** The user's devices as of the read (online changes only; none for an offline one). */
  devices: DeviceSummary;
}

export interface FeedRead {
  /** The snapshot of this read: the next read's cursor. */
  snapshot: string;
  /** Transitions in log order, then audience changes (one per user). */
  changes: WatchedChange[];
  /** As EventRead.failures. */
  failures?: unknown[];
}

/**
 * What live streams read each interval: the transitions and the audience changes committed after
 * `cursor`, by the same snapshot rule as readEventsSince, in one statement. Audience changes come
 * last: they carry the user's state as of the read, which is the state after the read's
 * transitions.
 */
export async function readFeedSince(
  db: Executor,
  cursor: string,
  scope: LogScope = WHOLE_SCOPE,
): Promise<FeedRead> {
  const { rows } = await sql<{
    snapshot: string;
    user_id: string | null;
    audience_only: boolean | null;
    online: boolean | null;
    invisible: boolean | null;
    shown_last_seen: Date | null;
    device_kinds: Array<string | null> | null;
  }>`
    WITH cur AS (SELECT pg_current_snapshot() AS s)
    SELECT cur.s::text AS snapshot, c.user_id, c.audience_only, c.online, c.invisible,
           c.shown_last_seen, c.device_kinds
    FROM cur LEFT JOIN LATERAL (${acrossScope(
      scope,
      (t) => sql`
      SELECT c.seq, c.user_id, c.audience_only, c.online,
             coalesce(pr.invisible, false) AS invisible,
             ${privacyLastSeen('c.last_seen')} AS shown_last_seen,
             ${deviceColumns('dp', t.settings)}
      FROM (
        SELECT seq, user_id, online, last_seen, false AS audience_only FROM ${sql.table(t.events)} e
        WHERE ${newSinceCursor('e', cursor, scope.node)}
        UNION ALL
        SELECT DISTINCT ON (v.user_id) NULL, v.user_id, p.online_since IS NOT NULL,
               coalesce(p.last_hb, ls.last_seen), true
        FROM ${sql.table(t.visibility)} v
        LEFT JOIN ${sql.table(t.pulse)} p ON p.user_id = v.user_id
        LEFT JOIN ${sql.table(t.lastSeen)} ls ON ls.user_id = v.user_id
        WHERE ${newSinceCursor('v', cursor, scope.node)}
      ) c
      LEFT JOIN ${sql.table(t.privacy)} pr ON pr.user_id = c.user_id
      -- Devices only for online changes: one primary-key probe each, transitions being few.
      LEFT JOIN ${sql.table(t.pulse)} dp ON c.online AND dp.user_id = c.user_id`,
    )}) c ON true
    ORDER BY c.audience_only, c.seq`.execute(db);
  const changes: WatchedChange[] = [];
  for (const row of rows) {
    if (row.user_id === null) continue;
    changes.push({
      userId: Number(row.user_id),
      audienceOnly: row.audience_only!,
      online: row.online!,
      invisible: row.invisible!,
      shownLastSeen: row.shown_last_seen,
      devices: deviceSummary(row.online!, row.device_kinds),
    });
  }
  return { snapshot: rows[0]!.snapshot, changes };
}

/**
 * How live streams and the offline detector read the log: by one snapshot of the database
 * (plain PostgreSQL, changeLogOf), or node by node on Citus (lib/store/node-change-log.ts). A
 * cursor is opaque to callers: they only hand back what a read returned.
 */
export interface ChangeLogReader {
  /** A cursor to start reading from: everything committed before now is behind it. */
  currentCursor(): Promise<string>;
  readEvents(cursor: string): Promise<EventRead>;
  readFeed(cursor: string): Promise<FeedRead>;
  /** Ends connections of its own, if any (its owner calls it, after the feed and detector stop). */
  close(): Promise<void>;
}

/** The change log of one PostgreSQL database, read through `db`. */
export function changeLogOf(db: Executor): ChangeLogReader {
  return {
    currentCursor: () => currentEventCursor(db),
    readEvents: (cursor) => readEventsSince(db, cursor),
    readFeed: (cursor) => readFeedSince(db, cursor),
    close: () => Promise.resolve(),
  };
}

/** Deletes the audience changes older than an hour (every stream read them long ago). */
export async function deleteOldVisibilityChanges(db: Executor): Promise<number> {
  const result = await db
    .deleteFrom('pulse_visibility_changes')
    .where('at', '<', sql<Date>`now() - interval '1 hour'`)
    .executeTakeFirst();
  return Number(result.numDeletedRows);
}

export interface MarkedOnline {
  userId: number;
  /** last_hb in epoch ms (database clock). */
  lastHb: number;
}

export interface DetectorClock {
  /** pulse_settings.online_threshold_seconds, read by the same statement. */
  thresholdSeconds: number;
  /** now() of the statement, epoch ms: the database clock. */
  dbNow: number;
}

/**
 * Every user marked online (`online_since` not null) with their last heartbeat: the offline
 * detector's schedule on start or take-over. One scan of `pulse` (no index on online_since, so
 * heartbeats stay HOT); runs once per take-over, not per tick.
 */
export async function scanMarkedOnline(
  db: Executor,
): Promise<DetectorClock & { users: MarkedOnline[] }> {
  const clock = await readDetectorClock(db);
  const rows = await db
    .selectFrom('pulse')
    .select(['user_id', 'last_hb'])
    .where('online_since', 'is not', null)
    .execute();
  const users = rows.map((row) => ({ userId: Number(row.user_id), lastHb: row.last_hb.getTime() }));
  return { ...clock, users };
}

/** The threshold and the database clock. */
export async function readDetectorClock(db: Executor): Promise<DetectorClock> {
  const { rows } = await sql<{ threshold: number; now: Date }>`
    SELECT online_threshold_seconds AS threshold, now() AS now
    FROM pulse_settings WHERE id = 1`.execute(db);
  const row = rows[0];
  if (!row) throw new Error('pulse_settings has no row: run npm run migrate');
  return { thresholdSeconds: row.threshold, dbNow: row.now.getTime() };
}

export interface ExpiryResult extends DetectorClock {
  /** Users this statement took offline (an offline `threshold` event each). */
  expired: MarkedOnline[];
  /** Users still marked online, with their current last heartbeat: check again when that expires. */
  live: MarkedOnline[];
}

/**
 * The offline detector's statement for users it believes due: those still marked online whose
 * last heartbeat is older than the threshold are unmarked and get an offline `threshold` event, in
 * the same statement; the others come back with their last heartbeat. Users no longer marked (or
 * deleted) are in neither list. Idempotent: two detectors running it for the same user log one
 * event (the second UPDATE finds online_since null once the first commits). With a `router` on
 * Citus, one statement per shard.
 */
export async function expireDue(
  db: Executor,
  userIds: readonly number[],
  router?: ShardRouter,
): Promise<ExpiryResult> {
  const ids = normalizeUserIds(userIds);
  const groups = (router && ids.length > 0 && (await router.group(ids))) || [ids];
  const results = await Promise.all(groups.map((group) => expireGroup(db, group)));
  const merged: ExpiryResult = { ...results[0]!, expired: [], live: [] };
  for (const result of results) {
    merged.expired.push(...result.expired);
    merged.live.push(...result.live);
  }
  return merged;
}

/**
 * Most due users turn out refreshed: a plain read finds the few expired ones (half the database
 * CPU of the expiring statement per user), and only those go through expireMarked.
 */
async function expireGroup(db: Executor, ids: number[]): Promise<ExpiryResult> {
  const { rows } = await sql<{
    threshold: number;
    now: Date;
    user_id: string | null;
    last_hb: Date | null;
  }>`
    SELECT s.online_threshold_seconds AS threshold, now() AS now, p.user_id, p.last_hb
    FROM pulse_settings s
    LEFT JOIN pulse p ON p.user_id = ANY(${ids}::bigint[]) AND p.online_since IS NOT NULL
    WHERE s.id = 1`.execute(db);
  const first = rows[0];
  if (!first) throw new Error('pulse_settings has no row: run npm run migrate');
  const deadline = first.now.getTime() - first.threshold * 1000;
  const result: ExpiryResult = {
    thresholdSeconds: first.threshold,
    dbNow: first.now.getTime(),
    expired: [],
    live: [],
  };
  const due: number[] = [];
  for (const row of rows) {
    if (row.user_id === null) continue;
    const user = { userId: Number(row.user_id), lastHb: row.last_hb!.getTime() };
    if (user.lastHb <= deadline) due.push(user.userId);
    else result.live.push(user);
  }
  if (due.length === 0) return result;
  const expiry = await expireMarked(db, due);
  result.expired.push(...expiry.expired);
  result.live.push(...expiry.live);
  return result;
}

/** Unmarks those of `ids` still marked and past the threshold, logging them, in one statement. */
async function expireMarked(db: Executor, ids: number[]): Promise<ExpiryResult> {
  const { rows } = await sql<{
    threshold: number;
    now: Date;
    user_id: string | null;
    last_hb: Date | null;
    went_offline: boolean | null;
  }>`
    WITH s AS (
      SELECT online_threshold_seconds AS secs, make_interval(secs => online_threshold_seconds) AS t
      FROM pulse_settings WHERE id = 1
    ),
    cand AS (
      SELECT user_id, last_hb FROM pulse
      WHERE user_id = ANY(${ids}::bigint[]) AND online_since IS NOT NULL
    ),
    -- Only the expired candidates are probed again (most due users turn out refreshed).
    gone AS (
      UPDATE pulse SET online_since = NULL
      WHERE user_id = ANY(ARRAY(SELECT user_id FROM cand WHERE last_hb <= now() - (SELECT t FROM s)))
        AND online_since IS NOT NULL AND last_hb <= now() - (SELECT t FROM s)
      RETURNING user_id, last_hb
    ),
    logged AS (
      INSERT INTO pulse_events (user_id, online, reason, last_seen)
      SELECT user_id, false, 'threshold', last_hb FROM gone
    )
    SELECT (SELECT secs FROM s) AS threshold, now() AS now, r.user_id, r.last_hb, r.went_offline
    FROM (SELECT 1) one LEFT JOIN LATERAL (
      SELECT c.user_id, coalesce(g.last_hb, c.last_hb) AS last_hb, g.user_id IS NOT NULL AS went_offline
      FROM cand c LEFT JOIN gone g ON g.user_id = c.user_id
    ) r ON true`.execute(db);
  const first = rows[0];
  if (!first || first.threshold === null)
    throw new Error('pulse_settings has no row: run npm run migrate');
  const result: ExpiryResult = {
    thresholdSeconds: first.threshold,
    dbNow: first.now.getTime(),
    expired: [],
    live: [],
  };
  for (const row of rows) {
    if (row.user_id === null) continue;
    const user = { userId: Number(row.user_id), lastHb: row.last_hb!.getTime() };
    (row.went_offline ? result.expired : result.live).push(user);
  }
  return result;
}

// --- Retention: one partition per UTC day, created ahead, dropped after event_retention_days ---

const PARTITION_PREFIX = 'pulse_events_';

/** Partitions DDL waits for at most this long: a queued ACCESS EXCLUSIVE would stall heartbeats. */
const PARTITION_LOCK_TIMEOUT = '2s';

/**
 * Creates the missing daily partitions from today to `aheadDays` ahead (UTC). Returns the names
 * it created. Each in its own short transaction with a lock timeout: creating a partition locks
 * the parent table, and a lock request queued behind a long reader would hold up every writer.
 */
export async function ensureEventPartitions(db: Executor, aheadDays: number): Promise<string[]> {
  const { rows } = await sql<{ name: string; from: string; to: string }>`
    SELECT ${PARTITION_PREFIX} || to_char(d, 'YYYYMMDD') AS name,
           d::text AS from, (d + interval '1 day')::text AS to
    FROM generate_series(date_trunc('day', now() AT TIME ZONE 'UTC'),
                         date_trunc('day', now() AT TIME ZONE 'UTC') + make_interval(days => ${aheadDays}),
                         interval '1 day') AS d
    WHERE to_regclass(${PARTITION_PREFIX} || to_char(d, 'YYYYMMDD')) IS NULL`.execute(db);
  const created: string[] = [];
  for (const { name, from, to } of rows) {
    await db.transaction().execute(async (trx) => {
      await sql`SET LOCAL lock_timeout = ${sql.lit(PARTITION_LOCK_TIMEOUT)}`.execute(trx);
      await sql`CREATE TABLE IF NOT EXISTS ${sql.id(name)} PARTITION OF pulse_events
        FOR VALUES FROM (${sql.lit(`${from} UTC`)}) TO (${sql.lit(`${to} UTC`)})`.execute(trx);
    });
    created.push(name);
  }
  return created;
}

/**
 * Drops the daily partitions whose whole day ended more than pulse_settings.event_retention_days
 * ago. Returns the names it dropped. Dropping a table costs no VACUUM, whatever it held.
 */
export async function dropExpiredEventPartitions(db: Executor): Promise<string[]> {
  const { rows } = await sql<{ name: string }>`
    SELECT c.relname AS name
    FROM pg_inherits i
    JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'pulse_events'::regclass
      AND c.relname ~ ${`^${PARTITION_PREFIX}[0-9]{8}$`}
      AND to_date(substr(c.relname, ${PARTITION_PREFIX.length + 1}), 'YYYYMMDD') + 1
          <= (now() AT TIME ZONE 'UTC')::date
             - (SELECT event_retention_days FROM pulse_settings WHERE id = 1)
    ORDER BY c.relname`.execute(db);
  for (const { name } of rows) {
    await db.transaction().execute(async (trx) => {
      await sql`SET LOCAL lock_timeout = ${sql.lit(PARTITION_LOCK_TIMEOUT)}`.execute(trx);
      await sql`DROP TABLE IF EXISTS ${sql.id(name)}`.execute(trx);
    });
  }
  return rows.map((row) => row.name);
}

/** Rows in the default partition (they arrive only when no daily partition was made in time). */
export async function countDefaultPartitionEvents(db: Executor): Promise<number> {
  const { rows } = await sql<{ n: number }>`
    SELECT count(*)::int AS n FROM pulse_events_default`.execute(db);
  return rows[0]?.n ?? 0;
}

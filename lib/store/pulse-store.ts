/**
 * Every SQL statement that touches `pulse`. Each function takes the Kysely instance or transaction
 * to run on, so callers decide about transactions. Nothing here knows about HTTP or timers.
 *
 * Citus compatibility (see README): the upsert sets `last_hb = EXCLUDED.last_hb` with `now()` in
 * the inserted SELECT list, and the sweep walks primary-key ranges, never ctid. pulse_last_seen is
 * co-located with pulse (by user_id); pulse_settings is a one-row reference table.
 */
import { CompiledQuery, sql, type Kysely } from 'kysely';
import type { Database, DeviceKind } from './schema.ts';
import type { ShardRouter, ShardTables } from '../citus/shard-routing.ts';
import { preparedStatement } from '../infra/prepared-statements.ts';
import { isDatabaseUnavailable } from '../infra/db.ts';
import { DEFAULT_ONLINE_THRESHOLD_SECONDS, LiveOnlineThreshold } from './online-threshold.ts';

export type Executor = Kysely<Database>;

/** Sorted and de-duplicated: one statement may not touch a row twice, and a fixed lock order
 * means two concurrent upserts can never deadlock each other. */
export function normalizeUserIds(userIds: Iterable<number>): number[] {
  return [...new Set(userIds)].sort((a, b) => a - b);
}

/** The kinds a device may say it is (pulse_device_kind), sorted as answers list them. */
export const DEVICE_KINDS = [
  'desktop',
  'mobile',
  'other',
  'web',
] as const satisfies readonly DeviceKind[];
export type { DeviceKind };

/**
 * The devices of heartbeats, parallel to their user ids: `ids[i]` is the client's device id of the
 * i-th user id (null: none named, the user's unnamed device), `kinds[i]` its kind (or null).
 */
export interface DeviceTags {
  ids: ReadonlyArray<string | null>;
  kinds: ReadonlyArray<DeviceKind | null>;
}

/** One statement's heartbeats: each user once, sorted by id, with the device of its beat. */
interface HeartbeatRound {
  ids: number[];
  deviceIds: Array<string | null>;
  kinds: Array<DeviceKind | null>;
}

/**
 * The key `pulse.device_key` and the elements of `pulse.devices` hold for a device id: its 32-bit
 * FNV-1a hash as a signed integer (4 bytes in every `pulse` row, where the id itself would take
 * up to 65), 0 for none named. Computed here, so the heartbeat statement hashes nothing. Two
 * devices of one user with the same key (a chance of 1 in 2^32) count as one.
 */
export function deviceKey(deviceId: string | null): number {
  if (deviceId === null) return 0;
  let hash = 0x811c9dc5;
  for (let i = 0; i < deviceId.length; i += 1) {
    hash ^= deviceId.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193);
  }
  return hash | 0 || 1;
}

/** A kind as its position in pulse_device_kind (1-based; 0: none), for an int2 array parameter. */
const kindCode = (kind: DeviceKind | null) => (kind === null ? 0 : DEVICE_KINDS.indexOf(kind) + 1);
/** The kind of a code, in SQL: out of the array's bounds (0) is NULL. */
const kindOf = (code: ReturnType<typeof sql>) =>
  sql`(ARRAY['desktop', 'mobile', 'other', 'web']::pulse_device_kind[])[${code}]`;

/**
 * The heartbeats of a flush as statements: one per (user, device), the last kind given winning. A
 * statement may touch a user's row once (ON CONFLICT), so a user beating from several devices in
 * one flush (one API process holding two of their streams) gets a statement per device: the first
 * device of every user in the first, the second in the second, ... Without devices: one statement.
 */
function heartbeatRounds(userIds: Iterable<number>, devices?: DeviceTags): HeartbeatRound[] {
  if (devices === undefined) {
    const ids = normalizeUserIds(userIds);
    if (ids.length === 0) return [];
    const none = ids.map(() => null);
    return [{ ids, deviceIds: none, kinds: none }];
  }
  const byUser = new Map<number, Map<string | null, DeviceKind | null>>();
  let index = 0;
  for (const id of userIds) {
    const device = devices.ids[index] ?? null;
    const kind = devices.kinds[index] ?? null;
    index += 1;
    let of = byUser.get(id);
    if (of === undefined) byUser.set(id, (of = new Map<string | null, DeviceKind | null>()));
    of.delete(device);
    of.set(device, kind);
  }
  const rounds: HeartbeatRound[] = [];
  for (const id of [...byUser.keys()].sort((a, b) => a - b)) {
    let round = 0;
    for (const [device, kind] of byUser.get(id)!) {
      const into = (rounds[round] ??= { ids: [], deviceIds: [], kinds: [] });
      into.ids.push(id);
      into.deviceIds.push(device);
      into.kinds.push(kind);
      round += 1;
    }
  }
  return rounds;
}

/**
 * Devices (issue 22). `pulse` keeps one row per user, and a beat from any device writes only that
 * row: last_hb is the newest beat of any device and device_key that beat's device (deviceKey: a
 * hash of its id, 0 for none named). While the user is on several devices at once, `devices` (an
 * array of pulse_device) holds each one's key, kind and last beat, newest first; else it is NULL.
 */

/**
 * The device columns of a beat's ON CONFLICT update, EXCLUDED being the beating device and `p`
 * the row as it is (locked). A user on one device beating from it again (almost every beat)
 * costs two comparisons; any other beat goes through pulse_devices_after_beat (migration 0015):
 * the devices still fresh, newest first, or NULL (one device) when no other is. `threshold`: the
 * online threshold as an interval. Only columns, parameters and IMMUTABLE functions, as Citus
 * allows in an INSERT's ON CONFLICT update. last_hb and device_key are the last writer's, as
 * last_hb always was: the change log's `online_since = last_hb` test needs last_hb set by this
 * statement (keeping the greater of two out-of-order beats logged users online twice).
 */
const deviceColumnsOnBeat = (threshold: ReturnType<typeof sql>) => sql`
  device_key = EXCLUDED.device_key, device_kind = EXCLUDED.device_kind,
  devices = CASE WHEN p.devices IS NULL AND p.device_key = EXCLUDED.device_key THEN NULL
                 ELSE pulse_devices_after_beat(
                   p.devices, ROW(p.device_key, p.device_kind, p.last_hb)::pulse_device,
                   ROW(EXCLUDED.device_key, EXCLUDED.device_kind, EXCLUDED.last_hb)::pulse_device,
                   ${threshold}) END`;

/**
 * The online threshold for deviceColumnsOnBeat: a copy per Kysely instance, read again once
 * older than THRESHOLD_REFRESH_MS. A parameter, not the settings row's live subquery, because
 * Citus allows none in an INSERT. Only the device bookkeeping uses it (which other devices a beat
 * keeps in `devices`): the online rule, every reader and a device's offline read the live row.
 * Just after a DBA raises the threshold, a device beating slower than the old one may drop out of
 * `devices` until its next beat, for at most this long. A failed read (on Citus, the reference
 * table read on a node that is down while the shard to write is not) or a missing settings row
 * (reads are refused meanwhile, heartbeats still land) keeps the last value, or the default.
 */
const THRESHOLD_REFRESH_MS = 5_000;
const thresholds = new WeakMap<Executor, LiveOnlineThreshold>();

function deviceThresholdSeconds(db: Executor): Promise<number> {
  let threshold = thresholds.get(db);
  if (threshold === undefined) {
    threshold = new LiveOnlineThreshold(
      async () => (await readPresenceSettings(db)).onlineThresholdSeconds,
      DEFAULT_ONLINE_THRESHOLD_SECONDS,
      THRESHOLD_REFRESH_MS,
    );
    thresholds.set(db, threshold);
  }
  return threshold.current();
}

/**
 * The heartbeat statement on plain PostgreSQL (routedUpsert is Citus's): the upsert of the
 * round's rows (`rows`: arrays, one row per user), with the change log's online transitions in
 * the same statement: a user whose row is new or not marked online (`online_since` null) gets
 * `online_since = now()`, and exactly those rows (`online_since = last_hb`: set by this statement)
 * get an `online` event, reason `held` for the ids in `heldIds` (a stream's held presence), else
 * `heartbeat`; `at` and `last_seen` are the heartbeat time.
 */
const heartbeatUpsert = (
  rows: ReturnType<typeof sql>,
  heldIds: readonly number[],
  thresholdSeconds: number,
  /** `plain`: rows of (user_id), no device named (device_key 0); `devices`: (user_id, device_key, kind code). */
  form: 'plain' | 'devices',
) => sql`
  WITH up AS (
    INSERT INTO pulse AS p (user_id, last_hb, online_since${form === 'plain' ? sql`` : sql`, device_key, device_kind`})
    SELECT user_id, now(), now()${form === 'plain' ? sql`` : sql`, device_key, ${kindOf(sql`kind`)}`}
    FROM ${rows} AS i(${form === 'plain' ? sql`user_id` : sql`user_id, device_key, kind`})
    ON CONFLICT (user_id) DO UPDATE
      SET last_hb = EXCLUDED.last_hb, online_since = coalesce(p.online_since, EXCLUDED.online_since),
          ${deviceColumnsOnBeat(sql`make_interval(secs => ${thresholdSeconds}::int)`)}
    RETURNING user_id, last_hb, online_since
  )
  INSERT INTO pulse_events (user_id, online, reason, at, last_seen)
  SELECT user_id, true,
         CASE WHEN user_id = ANY(${heldIds}::bigint[]) THEN 'held' ELSE 'heartbeat' END,
         last_hb, last_hb
  FROM up WHERE online_since = last_hb`;

/** heartbeatUpsert as text per form, built once per Kysely instance. */
const upsertSql = new WeakMap<Executor, Record<'plain' | 'devices', string>>();
function heartbeatUpsertSql(db: Executor): Record<'plain' | 'devices', string> {
  let text = upsertSql.get(db);
  if (text === undefined) {
    // Compiled once, then run with each flush's arrays: compiling the same statement for every
    // flush was measurable on the single-heartbeat path (docs/request-cost.md).
    const plain = heartbeatUpsert(sql`unnest(${[]}::bigint[])`, [], 0, 'plain').compile(db);
    const devices = heartbeatUpsert(
      sql`unnest(${[]}::bigint[], ${[]}::int4[], ${[]}::int2[])`,
      [],
      0,
      'devices',
    ).compile(db);
    // Run with [ids, (keys, kinds,) threshold seconds, held ids], in this order.
    if (plain.parameters.length !== 3 || devices.parameters.length !== 5) {
      throw new Error('the heartbeat upsert changed its parameters');
    }
    text = { plain: preparedStatement(plain.sql), devices: preparedStatement(devices.sql) };
    upsertSql.set(db, text);
  }
  return text;
}

/**
 * Marks every given user as seen now (by the database clock), logging the online transitions.
 * One statement (one per device of a user beating from several in one call); with a `router` on
 * Citus, one statement per shard instead (see below, and lib/citus/shard-routing.ts). Rejects
 * when any id was not written.
 */
export async function recordHeartbeats(
  db: Executor,
  userIds: Iterable<number>,
  router?: ShardRouter,
  /** Those of `userIds` beaten by a stream's held presence: their online events say `held`. */
  heldIds: readonly number[] = [],
  /** The device of each beat, parallel to `userIds`; absent: none named. */
  devices?: DeviceTags,
): Promise<void> {
  const partial = await recordHeartbeatsByShard(db, userIds, router, heldIds, devices);
  if (partial) throw partial.error;
}

/** Ids whose shard statement failed while the others committed, with the first failure. */
export interface PartialWrite {
  failedIds: ReadonlySet<number>;
  error: unknown;
}

/**
 * recordHeartbeats, telling a partial write apart: on Citus each shard's statement commits or
 * fails on its own (a worker down fails only its shards), and the answer names the ids not
 * written. Resolves undefined when every id was written; rejects when none was.
 */
export async function recordHeartbeatsByShard(
  db: Executor,
  userIds: Iterable<number>,
  router?: ShardRouter,
  heldIds: readonly number[] = [],
  devices?: DeviceTags,
): Promise<PartialWrite | undefined> {
  const rounds = heartbeatRounds(userIds, devices);
  let partial: PartialWrite | undefined;
  for (const round of rounds) {
    const failed = await writeRound(db, round, router, heldIds, devices !== undefined);
    if (failed === undefined) continue;
    if (partial === undefined)
      partial = { failedIds: new Set(failed.failedIds), error: failed.error };
    else for (const id of failed.failedIds) (partial.failedIds as Set<number>).add(id);
  }
  return partial;
}

/**
 * Citus: the upsert of one shard's users as `INSERT ... VALUES` (routed as it is to the shard,
 * where an INSERT ... SELECT is pulled through the coordinator) and their online events, in one
 * transaction on that shard's node. One statement with both, as on plain PostgreSQL, makes Citus
 * send the upsert's rows to every worker and commit on all of them: a worker down would then fail
 * every flush.
 */
async function routedUpsert(
  db: Executor,
  round: HeartbeatRound,
  indexes: readonly number[],
  named: boolean,
  heldIds: readonly number[],
): Promise<void> {
  const values = sql.join(
    indexes.map((index) => {
      const id = round.ids[index]!;
      if (!named) return sql`(${id}::bigint, now(), now())`;
      const key = deviceKey(round.deviceIds[index] ?? null);
      const kind = kindOf(sql`${kindCode(round.kinds[index] ?? null)}::int2`);
      return sql`(${id}::bigint, now(), now(), ${key}::int4, ${kind})`;
    }),
  );
  const seconds = await deviceThresholdSeconds(db);
  await db.transaction().execute(async (trx) => {
    const { rows } = await sql<{ user_id: string; came_online: boolean }>`
      INSERT INTO pulse AS p (user_id, last_hb, online_since${named ? sql`, device_key, device_kind` : sql``})
      VALUES ${values}
      ON CONFLICT (user_id) DO UPDATE
        SET last_hb = EXCLUDED.last_hb, online_since = coalesce(p.online_since, EXCLUDED.online_since),
            ${deviceColumnsOnBeat(sql`make_interval(secs => ${seconds}::int)`)}
      RETURNING user_id, online_since = last_hb AS came_online`.execute(trx);
    const online = rows.filter((row) => row.came_online).map((row) => Number(row.user_id));
    if (online.length === 0) return;
    // From the rows just written (the same shard): their last_hb to the microsecond.
    await sql`INSERT INTO pulse_events (user_id, online, reason, at, last_seen)
      SELECT user_id, true,
             CASE WHEN user_id = ANY(${bigintArrayLiteral(heldIds)})
                  THEN 'held' ELSE 'heartbeat' END,
             last_hb, last_hb
      FROM pulse WHERE user_id = ANY(${bigintArrayLiteral(online)})`.execute(trx);
  });
}

/** One round (each user once): one upsert, or on Citus one per shard. */
async function writeRound(
  db: Executor,
  round: HeartbeatRound,
  router: ShardRouter | undefined,
  heldIds: readonly number[],
  named: boolean,
): Promise<PartialWrite | undefined> {
  const { ids } = round;
  const groups = router ? await router.group(ids) : null;
  if (groups === null) {
    const text = heartbeatUpsertSql(db);
    const seconds = await deviceThresholdSeconds(db);
    await db.executeQuery(
      named
        ? CompiledQuery.raw(text.devices, [
            ids,
            round.deviceIds.map(deviceKey),
            round.kinds.map(kindCode),
            seconds,
            heldIds,
          ])
        : CompiledQuery.raw(text.plain, [ids, seconds, heldIds]),
    );
    return undefined;
  }
  // Citus: an INSERT ... SELECT is run through the coordinator (its rows are pulled there, then
  // pushed to the shards in a second step), while a multi-row VALUES whose ids all live on one
  // shard is routed there as it is (docs/citus.md).
  // Each statement touches one shard in sorted id order, so concurrent writers cannot deadlock.
  const at = new Map(ids.map((id, index) => [id, index]));
  const outcomes = await Promise.allSettled(
    groups.map(async (group) => {
      const indexes = group.map((id) => at.get(id)!);
      // The node holding the shard, when DATABASE_URL lists several (lib/citus/shard-routing.ts).
      const executor = router!.executorFor(group) ?? db;
      await routedUpsert(executor, round, indexes, named, heldIds);
    }),
  );
  return partialWrite(groups, outcomes);
}

/** undefined when every group was written; throws the first error when none was. */
function partialWrite(
  groups: readonly number[][],
  outcomes: readonly PromiseSettledResult<unknown>[],
): PartialWrite | undefined {
  let error: unknown;
  let failed = 0;
  const failedIds = new Set<number>();
  outcomes.forEach((outcome, index) => {
    if (outcome.status === 'fulfilled') return;
    if (failed === 0) error = outcome.reason;
    failed += 1;
    for (const id of groups[index]!) failedIds.add(id);
  });
  if (failed === 0) return undefined;
  if (failed === outcomes.length) throw error;
  return { failedIds, error };
}

/** `'{1,2,3}'::bigint[]` for ids that are integers (checked: this is SQL text). */
function bigintArrayLiteral(ids: readonly number[]) {
  for (const id of ids) {
    if (!Number.isSafeInteger(id)) throw new TypeError(`not a user id: ${id}`);
  }
  return sql.raw(`'{${ids.join(',')}}'::bigint[]`);
}

/**
 * THE online rule, for every query Pulse runs (API reads, stream change detection, the sweeper's
 * guard): a user is online when `last_hb > onlineSince`, i.e. within
 * pulse_settings.online_threshold_seconds of the database clock. The threshold is read live from
 * the one settings row (an uncorrelated subquery: evaluated once per statement, an InitPlan), so
 * a change by `npm run migrate` or a DBA's UPDATE reaches every process at once. The view
 * `pulse_online` (migration 0003) is the same predicate for SQL readers.
 */
export const onlineSince = onlineSinceIn('pulse_settings');

/** onlineSince with the settings row read from `settings` (on Citus, a node's own shard of it). */
export function onlineSinceIn(settings: string) {
  return sql<Date>`(now() - (SELECT make_interval(secs => s.online_threshold_seconds) FROM ${sql.table(settings)} s WHERE s.id = 1))`;
}

/** `column > onlineSince`: true when the heartbeat time in `column` counts as online. */
export const isOnline = (column: string) => sql<boolean>`(${sql.ref(column)} > ${onlineSince})`;

/**
 * The shared settings row (pulse_settings id = 1) is gone: the online rule has no threshold, and
 * `isOnline` is NULL for every row. Reads refuse with this rather than call everyone offline.
 */
export class SettingsMissingError extends Error {
  constructor() {
    super('pulse_settings has no row (id = 1): run npm run migrate to restore it');
    this.name = 'SettingsMissingError';
  }
}

/**
 * Puts the settings row back with its defaults if it was deleted (npm run migrate); true when it
 * had to. Every column of pulse_settings has a default (migrations 0003, 0004, 0006).
 */
export async function restoreSettingsRow(db: Executor): Promise<boolean> {
  const { rows } = await sql`
    INSERT INTO pulse_settings (id) VALUES (1) ON CONFLICT (id) DO NOTHING RETURNING id`.execute(
    db,
  );
  return rows.length > 0;
}

/** Where a user is online: how many devices are fresh, and the kinds those named (sorted). */
export interface DeviceSummary {
  count: number;
  kinds: DeviceKind[];
}

/** An offline user's, or one the reader may not see. */
export const NO_DEVICES: DeviceSummary = Object.freeze({ count: 0, kinds: [] as DeviceKind[] });

/** What Pulse knows about one user: online by the shared rule, and when they were last seen. */
export interface Presence {
  online: boolean;
  /** Last heartbeat (online users and rows not yet swept), else pulse_last_seen, else null. */
  lastSeen: Date | null;
  /** The user's fresh devices (read only for online users; zero when offline). */
  devices: DeviceSummary;
}

export const UNKNOWN_PRESENCE: Presence = Object.freeze({
  online: false,
  lastSeen: null,
  devices: NO_DEVICES,
});

/**
 * The devices of the `pulse` row aliased `p`, as one column (device_kinds): the kind of each fresh
 * device, NULL for one that gave none. On one device (devices NULL), the row's own; on several,
 * the fresh elements of its array, by pulse_fresh_device_kinds (a function, not a subquery: Citus
 * refuses correlated subqueries over a function's rows). Meant for online users: the reader
 * answers NO_DEVICES for the others.
 */
export const deviceColumns = (
  p: string,
  /** Where the settings row is: on Citus, a node's own shard of it. */
  settings = 'pulse_settings',
) => {
  const devices = sql.ref(`${p}.devices`);
  return sql`
    CASE WHEN ${devices} IS NULL THEN ARRAY[${sql.ref(`${p}.device_kind`)}::text]
         ELSE pulse_fresh_device_kinds(${devices}, ${onlineSinceIn(settings)}) END AS device_kinds`;
};

/** The summary from deviceColumns' column, for a user read as `online`. */
export function deviceSummary(
  online: boolean,
  kinds: ReadonlyArray<string | null> | null | undefined,
): DeviceSummary {
  if (!online) return NO_DEVICES;
  const named = new Set((kinds ?? []).filter((kind) => kind !== null));
  // Online means some device beat within the threshold: at least one, whatever the row says.
  return { count: Math.max(1, kinds?.length ?? 0), kinds: [...named].sort() as DeviceKind[] };
}

/**
 * Who is asking, for the operator's visibility rule: `viewer` is the caller's user id, or null for
 * a caller that is not a user (a gateway token, AUTH_MODE=none). Pass it only while the rule
 * exists (visibilityRuleInstalled); without it, everyone sees everyone.
 */
export interface Visibility {
  viewer: number | null;
}

/** The function an operator creates to decide who sees whom (docs/security.md). */
export const VISIBILITY_RULE = 'pulse_visible_users(bigint,bigint[])';

/** Whether the operator's visibility rule exists (to_regprocedure: a catalog lookup). */
export async function visibilityRuleInstalled(db: Executor): Promise<boolean> {
  const { rows } = await sql<{ installed: boolean }>`
    SELECT to_regprocedure(${VISIBILITY_RULE}) IS NOT NULL AS installed`.execute(db);
  return rows[0]?.installed === true;
}

/**
 * A user's last seen (`column`) as their privacy (pulse_privacy joined as `pr`) lets readers see
 * it: null when hidden, no later than invisible_since when invisible. Every reader uses this one.
 */
export const privacyLastSeen = (column: string) => sql<Date | null>`
  CASE WHEN pr.hide_last_seen THEN NULL
       WHEN pr.invisible THEN least(${sql.ref(column)}, pr.invisible_since)
       ELSE ${sql.ref(column)} END`;

/** Online (`column`) as readers see it: an invisible user (`pr`) reads as offline. */
const privacyOnline = (column: string) =>
  sql<boolean>`(${sql.ref(column)} AND NOT coalesce(pr.invisible, false))`;

/**
 * Each user's privacy applied to what readers see: invisible reads as offline with no last seen
 * after invisible_since, hidden last seen as null. `u` holds user_id, last_seen, online, live.
 * `privacy`: pulse_privacy, or only the rows of the statement's ids (Citus, see readPresence).
 */
const privateView = (privacy = sql`pulse_privacy`) => sql`
  SELECT u.user_id, ${privacyLastSeen('u.last_seen')} AS last_seen,
         ${privacyOnline('u.online')} AS online, u.live, u.device_kinds
  FROM u LEFT JOIN ${privacy} pr ON pr.user_id = u.user_id`;

/**
 * Online is NULL, not false, only when the threshold is missing (the settings row was deleted):
 * refuse rather than call everyone offline. `live`: a row of `pulse` (not of pulse_last_seen).
 */
function refuseWithoutThreshold(rows: ReadonlyArray<{ live: boolean; online: boolean }>): void {
  if (rows.some((row) => row.live && (row.online as boolean | null) === null)) {
    throw new SettingsMissingError();
  }
}

/**
 * Presence of each given user, in one statement (one round trip): their `pulse` row if any,
 * else their `pulse_last_seen` entry, as their privacy settings let others see it. With
 * `visibility`, users the operator's rule hides from the viewer are absent, exactly like users
 * Pulse knows nothing of (a caller always sees themselves). Users Pulse knows nothing of are
 * absent from the map.
 */
export async function readPresence(
  db: Executor,
  userIds: readonly number[],
  router?: ShardRouter,
  visibility?: Visibility,
): Promise<Map<number, Presence>> {
  const ids = normalizeUserIds(userIds);
  const found = new Map<number, Presence>();
  if (ids.length === 0) return found;
  // On Citus, one statement per shard (pulse and its companions are co-located): see findOnlineUserIds.
  const routed = router ? await router.group(ids) : null;
  const groups = routed ?? [ids];
  const perGroup = await Promise.all(
    groups.map(async (group) => {
      if (!routed) return (await presenceStatement(group, false, visibility).execute(db)).rows;
      // With a pool on the node holding the shard: its shard tables, read directly (no
      // distributed planning), unless the shard has moved away meanwhile.
      const direct = router!.shardTablesFor(group);
      if (direct) {
        const rows = await presenceStatement(group, true, visibility, direct.tables)
          .execute(direct.db)
          .then(
            ({ rows }) => rows,
            (error: unknown) => {
              // The node is unreachable: so would the long way be (503). Anything else (the shard
              // table gone after a move, a rule or grant the node lacks): take the long way.
              if (isDatabaseUnavailable(error)) throw error;
              return undefined;
            },
          );
        if (rows !== undefined && rows[0]?.placed !== false) {
          return rows.filter((row) => row.user_id !== null);
        }
      }
      const executor = router!.executorFor(group, 'read') ?? db;
      return (await presenceStatement(group, true, visibility).execute(executor)).rows;
    }),
  );
  const rows = perGroup.flat();
  refuseWithoutThreshold(rows);
  // A live row wins over an older last-seen entry of a user who came back.
  for (const row of rows) {
    const id = Number(row.user_id);
    if (row.live || !found.has(id)) {
      found.set(id, {
        online: row.online,
        lastSeen: row.last_seen,
        devices: deviceSummary(row.online, row.device_kinds),
      });
    }
  }
  return found;
}

interface PresenceRow {
  /** Only from a direct shard read: whether the shard is still placed where it ran. */
  placed?: boolean;
  user_id: string;
  last_seen: Date | null;
  online: boolean;
  live: boolean;
  device_kinds: Array<string | null>;
}

/**
 * readPresence's statement for `group`. `routed` (Citus): the ids go in as a literal, the online
 * rule (which reads the settings reference table) applies after the UNION, and pulse_privacy is
 * filtered by the same ids (Citus does not carry the ids through the UNION to the join):
 * otherwise Citus plans this statement for every shard, and a worker down fails reads of users on
 * the others. With `shard`, it reads those shard tables directly and answers a first column
 * `placed`: false (and no user) when pulse's shard is no longer placed on the node it runs on;
 * when it is, a row with user_id null stands for none found.
 */
function presenceStatement(
  group: readonly number[],
  routed: boolean,
  visibility: Visibility | undefined,
  shard?: ShardTables,
) {
  const idList = routed ? bigintArrayLiteral(group) : sql`${group}::bigint[]`;
  const table = (name: keyof Omit<ShardTables, 'shardId'>, plain: string) =>
    sql.table(shard ? shard[name] : plain);
  const privacy = routed
    ? sql`(SELECT * FROM ${table('privacy', 'pulse_privacy')} WHERE user_id = ANY(${idList}))`
    : undefined;
  // The rule runs once per statement over all its ids (a set, not a call per id), so a rule
  // joining a friends table is one index range scan of the viewer's friends.
  const visible =
    visibility === undefined
      ? sql``
      : sql`WHERE user_id = ${visibility.viewer}::bigint
               OR user_id IN (SELECT pulse_visible_users(${visibility.viewer}::bigint, ${group}::bigint[]))`;
  const settings = shard ? shard.settings : 'pulse_settings';
  const body = sql`
    u AS (
      SELECT user_id, last_seen, live AND (last_seen > ${onlineSinceIn(settings)}) AS online, live,
             ${deviceColumns('known', settings)} FROM (
        SELECT p.user_id, p.last_hb AS last_seen, true AS live, p.device_kind, p.devices
        FROM ${table('pulse', 'pulse')} p WHERE p.user_id = ANY(${idList})
        UNION ALL
        SELECT user_id, last_seen, false, NULL, NULL
        FROM ${table('lastSeen', 'pulse_last_seen')} WHERE user_id = ANY(${idList})
      ) known ${visible}
    )`;
  if (!shard) return sql<PresenceRow>`WITH ${body} ${privateView(privacy)}`;
  return sql<PresenceRow>`
    WITH here AS MATERIALIZED (
      SELECT EXISTS (
        SELECT 1 FROM pg_dist_placement pl
        WHERE pl.shardid = ${shard.shardId}::bigint AND pl.shardstate = 1
          AND pl.groupid = (SELECT groupid FROM pg_dist_local_group)) AS placed
    ),
    ${body},
    v AS (${privateView(privacy)})
    SELECT here.placed, v.* FROM here LEFT JOIN v ON here.placed`;
}

export interface WatchedPresence extends Presence {
  /** Online by the change log (pulse.online_since set): what the stream's later events follow. */
  marked: boolean;
  /** Invisible mode: `online` is already false for it. */
  invisible: boolean;
  /** False when the operator's rule hides the user from the viewer. */
  visible: boolean;
}

/**
 * A stream's snapshot in one statement: each known user's presence as readPresence gives it
 * (privacy applied), and what the feed needs to follow them afterwards: their state in the log,
 * whether they are invisible and, with `viewer` (only while the rule exists), whether the rule
 * lets the viewer see them. Users Pulse knows nothing of are absent.
 */
export async function readWatchedPresence(
  db: Executor,
  userIds: readonly number[],
  visibility?: Visibility,
): Promise<Map<number, WatchedPresence>> {
  const ids = normalizeUserIds(userIds);
  const found = new Map<number, WatchedPresence>();
  if (ids.length === 0) return found;
  const visible =
    visibility === undefined
      ? sql<boolean>`true`
      : sql<boolean>`(u.user_id = ${visibility.viewer}::bigint
          OR u.user_id IN (SELECT pulse_visible_users(${visibility.viewer}::bigint, ${ids}::bigint[])))`;
  const { rows } = await sql<{
    user_id: string;
    last_seen: Date | null;
    online: boolean;
    live: boolean;
    marked: boolean;
    invisible: boolean;
    visible: boolean;
    device_kinds: Array<string | null>;
  }>`
    WITH u AS (
      SELECT p.user_id, p.last_hb AS last_seen, ${isOnline('p.last_hb')} AS online, true AS live,
             p.online_since IS NOT NULL AS marked, ${deviceColumns('p')}
      FROM pulse p WHERE p.user_id = ANY(${ids}::bigint[])
      UNION ALL
      SELECT user_id, last_seen, false, false, false, '{}'::text[]
      FROM pulse_last_seen WHERE user_id = ANY(${ids}::bigint[])
    )
    SELECT u.user_id, ${privacyLastSeen('u.last_seen')} AS last_seen,
           ${privacyOnline('u.online')} AS online, u.live, u.marked, coalesce(pr.invisible, false) AS invisible, ${visible} AS visible,
           u.device_kinds
    FROM u LEFT JOIN pulse_privacy pr ON pr.user_id = u.user_id`.execute(db);
  refuseWithoutThreshold(rows);
  for (const row of rows) {
    const id = Number(row.user_id);
    if (!row.live && found.has(id)) continue; // a live row wins over an older last-seen entry
    found.set(id, {
      online: row.online,
      lastSeen: row.last_seen,
      devices: deviceSummary(row.online, row.device_kinds),
      marked: row.marked,
      invisible: row.invisible,
      visible: row.visible,
    });
  }
  return found;
}

/**
 * Which of the given (viewer, target) pairs the operator's rule lets the viewer see, in one
 * statement: the rule runs once per distinct viewer, over that viewer's targets. Returns, per
 * viewer (null: a caller that is not a user), the visible targets. Only while the rule exists.
 */
export async function findVisiblePairs(
  db: Executor,
  viewers: ReadonlyArray<number | null>,
  targets: readonly number[],
): Promise<Map<number | null, Set<number>>> {
  const visible = new Map<number | null, Set<number>>();
  if (targets.length === 0) return visible;
  const { rows } = await sql<{ viewer: string | null; user_id: string }>`
    SELECT q.viewer, v.user_id
    FROM (
      SELECT p.viewer, array_agg(p.target) AS targets
      FROM unnest(${viewers}::bigint[], ${targets}::bigint[]) AS p(viewer, target)
      GROUP BY p.viewer
    ) q
    CROSS JOIN LATERAL pulse_visible_users(q.viewer, q.targets) AS v(user_id)`.execute(db);
  for (const row of rows) {
    const viewer = row.viewer === null ? null : Number(row.viewer);
    let set = visible.get(viewer);
    if (set === undefined) visible.set(viewer, (set = new Set()));
    set.add(Number(row.user_id));
  }
  return visible;
}

/** A user's own privacy settings (pulse_privacy); no row: visible, last seen shown. */
export interface PrivacySettings {
  invisible: boolean;
  hideLastSeen: boolean;
}

export async function readPrivacy(db: Executor, userId: number): Promise<PrivacySettings> {
  const row = await db
    .selectFrom('pulse_privacy')
    .select(['invisible', 'hide_last_seen'])
    .where('user_id', '=', sql<string>`${userId}::bigint`)
    .executeTakeFirst();
  return { invisible: row?.invisible ?? false, hideLastSeen: row?.hide_last_seen ?? false };
}

/**
 * Changes the given settings of one user (the others stay) and returns them all. Turning
 * invisible records when (invisible_since, by the database clock); staying invisible keeps it.
 * `now()` only in the inserted row, EXCLUDED in the update (valid on Citus).
 */
export async function writePrivacy(
  db: Executor,
  userId: number,
  changes: { invisible?: boolean | undefined; hideLastSeen?: boolean | undefined },
): Promise<PrivacySettings> {
  const invisible = changes.invisible ?? null;
  const hide = changes.hideLastSeen ?? null;
  // Turning invisible or visible while online changes what watchers may see with no transition:
  // a pulse_visibility_changes row, in the same statement, tells the live streams.
  const { rows } = await sql<{ invisible: boolean; hide_last_seen: boolean }>`
    WITH before AS (
      SELECT invisible FROM pulse_privacy WHERE user_id = ${userId}::bigint
    ),
    written AS (
    INSERT INTO pulse_privacy AS pr (user_id, invisible, hide_last_seen, invisible_since, updated_at)
    VALUES (${userId}::bigint, coalesce(${invisible}::boolean, false),
            coalesce(${hide}::boolean, false),
            CASE WHEN ${invisible}::boolean THEN now() END, now())
    ON CONFLICT (user_id) DO UPDATE SET
      invisible = coalesce(${invisible}::boolean, pr.invisible),
      hide_last_seen = coalesce(${hide}::boolean, pr.hide_last_seen),
      invisible_since = CASE
        WHEN NOT coalesce(${invisible}::boolean, pr.invisible) THEN NULL
        WHEN pr.invisible THEN pr.invisible_since
        ELSE EXCLUDED.invisible_since END,
      updated_at = EXCLUDED.updated_at
    RETURNING invisible, hide_last_seen
    ),
    told AS (
      INSERT INTO pulse_visibility_changes (user_id, reason)
      SELECT ${userId}::bigint, 'privacy' FROM written
      WHERE written.invisible IS DISTINCT FROM coalesce((SELECT invisible FROM before), false)
        AND EXISTS (SELECT 1 FROM pulse
                    WHERE user_id = ${userId}::bigint AND online_since IS NOT NULL)
    )
    SELECT invisible, hide_last_seen FROM written`.execute(db);
  const row = rows[0]!;
  return { invisible: row.invisible, hideLastSeen: row.hide_last_seen };
}

/**
 * The subset of `userIds` online by the shared rule and not invisible (readPresence without last
 * seen, and without the operator's visibility rule, which the stream applies per viewer). Also the
 * stream's change-detection statement (api/stream/poll-feed.ts): a primary-key lookup per id, valid on
 * a Citus-distributed `pulse`. With a `router` on Citus, one statement per shard, each with only
 * that shard's ids (see lib/citus/shard-routing.ts); otherwise, and always on plain PostgreSQL, one
 * statement.
 */
export async function findOnlineUserIds(
  db: Executor,
  userIds: readonly number[],
  router?: ShardRouter,
): Promise<Set<number>> {
  const ids = normalizeUserIds(userIds);
  if (ids.length === 0) return new Set();
  const groups = (router && (await router.group(ids))) ?? [ids];
  const found = await Promise.all(
    groups.map((group) =>
      (router?.executorFor(group, 'read') ?? db)
        .selectFrom('pulse')
        .select(['user_id', isOnline('last_hb').as('online')])
        .where(sql<boolean>`user_id = ANY(${group}::bigint[])`)
        // NOT FALSE: rows whose rule is NULL (no settings row) come back, and are refused below.
        .where(sql<boolean>`${isOnline('last_hb')} IS NOT FALSE`)
        // Invisible users read as offline to everyone (pulse_privacy).
        .where(
          sql<boolean>`NOT EXISTS (SELECT 1 FROM pulse_privacy pr WHERE pr.user_id = pulse.user_id AND pr.invisible)`,
        )
        .execute(),
    ),
  );
  const rows = found.flat();
  if (rows.some((row) => (row.online as boolean | null) === null)) throw new SettingsMissingError();
  return new Set(rows.map((row) => Number(row.user_id)));
}

/** What every status answer says about one user: GET /status/{id}, POST /status/batch, the stream. */
export interface UserStatus {
  user_id: number;
  is_online: boolean;
  /** ISO 8601, or null when Pulse has never seen the user (or forgot them). */
  last_seen: string | null;
  /** Where the user is online: fresh devices and the kinds they named; count 0 when offline. */
  devices: DeviceSummary;
}

/** The status row of one user, as every status answer carries it. */
export function statusRow(userId: number, presence: Presence): UserStatus {
  return {
    user_id: userId,
    is_online: presence.online,
    last_seen: presence.lastSeen?.toISOString() ?? null,
    devices: presence.online ? presence.devices : NO_DEVICES,
  };
}

/** One status per requested id, in request order, duplicates answered as given (one statement). */
export async function readStatuses(
  db: Executor,
  userIds: readonly number[],
  visibility?: Visibility,
): Promise<UserStatus[]> {
  const found = await readPresence(db, userIds, undefined, visibility);
  return userIds.map((id) => statusRow(id, found.get(id) ?? UNKNOWN_PRESENCE));
}

/** The shared settings row (pulse_settings), see migrations/0003_presence_settings.ts. */
export interface PresenceSettings {
  onlineThresholdSeconds: number;
  lastSeenEnabled: boolean;
  lastSeenRetentionDays: number;
  /** pulse_events partitions older than this many days are dropped (lib/store/presence-log.ts). */
  eventRetentionDays: number;
}

/**
 * Reads the shared settings. `forShare` (inside a transaction) keeps them from changing until
 * the transaction ends: a sweep batch deletes by exactly the rule the API applies meanwhile.
 */
export async function readPresenceSettings(
  db: Executor,
  options: { forShare?: boolean } = {},
): Promise<PresenceSettings> {
  let query = db
    .selectFrom('pulse_settings')
    .select([
      'online_threshold_seconds',
      'last_seen_enabled',
      'last_seen_retention_days',
      'event_retention_days',
    ])
    .where('id', '=', sql<number>`1`);
  if (options.forShare) query = query.forShare();
  const row = await query.executeTakeFirst();
  if (!row) throw new Error('pulse_settings has no row: run npm run migrate');
  return {
    onlineThresholdSeconds: row.online_threshold_seconds,
    lastSeenEnabled: row.last_seen_enabled,
    lastSeenRetentionDays: row.last_seen_retention_days,
    eventRetentionDays: row.event_retention_days,
  };
}

/** Writes the given settings (npm run migrate); returns the names of those that changed. */
export async function updatePresenceSettings(
  db: Executor,
  changes: { [K in keyof PresenceSettings]?: PresenceSettings[K] | undefined },
): Promise<string[]> {
  const columns = {
    online_threshold_seconds: changes.onlineThresholdSeconds,
    last_seen_enabled: changes.lastSeenEnabled,
    last_seen_retention_days: changes.lastSeenRetentionDays,
    event_retention_days: changes.eventRetentionDays,
  };
  const set = Object.fromEntries(Object.entries(columns).filter(([, v]) => v !== undefined));
  if (Object.keys(set).length === 0) return [];
  const before = await readPresenceSettings(db);
  const changed = Object.entries(changes)
    .filter(
      ([key, value]) => value !== undefined && before[key as keyof PresenceSettings] !== value,
    )
    .map(([key]) => key);
  if (changed.length === 0) return [];
  await db
    .updateTable('pulse_settings')
    .set({ ...set, updated_at: sql<Date>`now()` })
    .where('id', '=', sql<number>`1`)
    .execute();
  return changed;
}

/*
 * Deleting presence rows, keeping their last heartbeat in pulse_last_seen and logging the offline
 * of those still marked online is one statement: a data-modifying CTE (DELETE ... RETURNING)
 * feeding both inserts, so nothing is lost between them and heartbeats pay nothing. The upsert's
 * guard compares columns only (valid on Citus). `gone` must return user_id, last_hb, online_since.
 */
const removeAndLog = (
  gone: ReturnType<typeof sql>,
  reason: 'offline' | 'sweep',
  lastSeenEnabled: ReturnType<typeof sql>,
  /** CTEs before `gone` (each followed by a comma). */
  before: ReturnType<typeof sql> = sql``,
) => sql`
  WITH ${before} gone AS (${gone}),
  logged AS (
    INSERT INTO pulse_events (user_id, online, reason, last_seen)
    SELECT user_id, false, ${reason}, CASE WHEN ${lastSeenEnabled} THEN last_hb END
    FROM gone WHERE online_since IS NOT NULL
  ),
  recorded AS (
    INSERT INTO pulse_last_seen (user_id, last_seen)
    SELECT user_id, last_hb FROM gone WHERE ${lastSeenEnabled}
    ON CONFLICT (user_id) DO UPDATE SET last_seen = EXCLUDED.last_seen
      WHERE pulse_last_seen.last_seen < EXCLUDED.last_seen
  )
  SELECT count(*)::int AS deleted FROM gone`;

const lastSeenSetting = sql`(SELECT last_seen_enabled FROM pulse_settings WHERE id = 1)`;

/**
 * The database's clock now, as text (to the microsecond): a deferred offline's "asked at", so
 * that a beat committed after the answer is always later, whatever the API process's own timing.
 */
export async function databaseNow(db: Executor): Promise<string> {
  const { rows } = await sql<{ now: string }>`
    SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS now`.execute(
    db,
  );
  return rows[0]!.now;
}

/**
 * Explicit offline: removes the users' presence rows, logs `offline` for those marked online and,
 * when last seen is on, records their last heartbeat, in one statement. Unknown ids are ignored.
 */
export async function setOffline(
  db: Executor,
  userIds: readonly number[],
  /**
   * Only users with no heartbeat after this database time (a deferred offline, docs/api.md:
   * `databaseNow()` when it was asked).
   */
  quietSince?: string,
): Promise<void> {
  const ids = normalizeUserIds(userIds);
  if (ids.length === 0) return;
  const quiet = quietSince === undefined ? sql`` : sql`AND last_hb <= ${quietSince}::timestamptz`;
  // The user leaves on every device: they all live in this row.
  await removeAndLog(
    sql`DELETE FROM pulse WHERE user_id = ANY(${ids}::bigint[]) ${quiet}
        RETURNING user_id, last_hb, online_since`,
    'offline',
    lastSeenSetting,
  ).execute(db);
}

/**
 * Explicit offline of one device per user (`devices[i]` of `userIds[i]`; null: the unnamed
 * device, that of requests naming none): only that device leaves. A user with another device
 * still fresh stays online with no event (pulse.last_hb becomes the newest remaining device's
 * beat, and a user left with one device is back to device_key); a user with none goes offline as
 * setOffline takes them, in the same statement. With `quietSince`, only devices that have not
 * beaten after that database time (a deferred offline). The rows are read FOR UPDATE, so a concurrent beat
 * is either before (and seen) or after (and brings the device back).
 */
export async function setDevicesOffline(
  db: Executor,
  userIds: readonly number[],
  devices: ReadonlyArray<string | null>,
  quietSince?: string,
  /** On Citus: one statement per shard, on the node holding it, so Citus routes each. */
  router?: ShardRouter,
): Promise<void> {
  const rounds = heartbeatRounds(userIds, {
    ids: devices,
    kinds: devices.map(() => null),
  });
  for (const round of rounds) {
    const groups = router ? await router.group(round.ids) : null;
    if (groups === null) {
      await deviceOffline(
        round.ids,
        round.deviceIds,
        quietSince,
        sql`${round.ids}::bigint[]`,
      ).execute(db);
      continue;
    }
    const deviceOf = new Map(round.ids.map((id, index) => [id, round.deviceIds[index] ?? null]));
    await Promise.all(
      groups.map((group) =>
        deviceOffline(
          group,
          group.map((id) => deviceOf.get(id) ?? null),
          quietSince,
          bigintArrayLiteral(group),
        ).execute(router!.executorFor(group) ?? db),
      ),
    );
  }
}

const deviceOffline = (
  ids: readonly number[],
  deviceIds: ReadonlyArray<string | null>,
  quietSince: string | undefined,
  /**
   * `ids` again: a parameter, or on Citus a literal, which every table's filter repeats so that
   * Citus routes the statement to the one shard (it cannot prune by a subquery).
   */
  idList: ReturnType<typeof sql>,
) => {
  const quiet =
    quietSince === undefined
      ? sql<boolean>`true`
      : sql<boolean>`(o.own_hb IS NULL OR o.own_hb <= ${quietSince}::timestamptz)`;
  // `others`: the user's other fresh devices when on several, newest first.
  return removeAndLog(
    sql`DELETE FROM pulse
        WHERE user_id = ANY(${idList})
          AND user_id = ANY(ARRAY(SELECT user_id FROM decide WHERE step = 'gone'))
        RETURNING user_id, last_hb, online_since`,
    'offline',
    lastSeenSetting,
    sql`input AS (
      SELECT i.user_id, i.device_key
      FROM unnest(${ids}::bigint[], ${deviceIds.map(deviceKey)}::int4[]) AS i(user_id, device_key)
    ),
    prev AS (
      SELECT p.user_id, p.device_key, p.devices, p.last_hb, p.last_hb > ${onlineSince} AS fresh
      FROM pulse p WHERE p.user_id = ANY(${idList})
      FOR UPDATE OF p
    ),
    own AS (
      SELECT i.user_id, i.device_key, p.devices IS NOT NULL AS several,
             p.device_key = i.device_key AS same, p.fresh AS prev_fresh,
             CASE WHEN p.devices IS NOT NULL
                  THEN (SELECT max(d.last_hb) FROM unnest(p.devices) d
                        WHERE d.device_key = i.device_key)
                  WHEN p.device_key = i.device_key THEN p.last_hb END AS own_hb,
             CASE WHEN p.devices IS NOT NULL
                  THEN ARRAY(SELECT d FROM unnest(p.devices) d
                             WHERE d.device_key <> i.device_key AND d.last_hb > ${onlineSince}
                             ORDER BY d.last_hb DESC) END AS others
      FROM input i JOIN prev p USING (user_id)
    ),
    decide AS (
      SELECT o.user_id, o.others,
             CASE WHEN NOT ${quiet} THEN 'stay'
                  WHEN o.several
                    THEN CASE cardinality(o.others) WHEN 0 THEN 'gone' WHEN 1 THEN 'alone'
                              ELSE 'fewer' END
                  WHEN o.same OR NOT o.prev_fresh THEN 'gone'
                  ELSE 'stay' END AS step
      FROM own o
    ),
    moved AS (
      INSERT INTO pulse AS p (user_id, last_hb, device_key, device_kind, devices)
      SELECT user_id, (others[1]).last_hb, (others[1]).device_key, (others[1]).device_kind,
             CASE WHEN step = 'fewer' THEN others END
      FROM decide WHERE step IN ('alone', 'fewer')
      ON CONFLICT (user_id) DO UPDATE
        SET last_hb = EXCLUDED.last_hb, device_key = EXCLUDED.device_key,
            device_kind = EXCLUDED.device_kind, devices = EXCLUDED.devices
    ),`,
  );
};

export interface SweepBatchResult {
  /** Rows deleted by this batch. */
  deleted: number;
  /** The highest user_id this batch covered; the next batch starts after it. Null when done. */
  nextCursor: string | null;
}

/**
 * Deletes expired rows among the next `batchSize` user ids after `cursor` (a primary-key range,
 * so the transaction is short and the staleness check stays inside the DELETE: a row refreshed
 * while the sweep runs is never removed). Expired means older than the greater of
 * `olderThanSeconds` and the shared online threshold (read FOR SHARE in the caller's transaction):
 * no setting of any process lets the sweep delete a row the API counts online. With last seen on,
 * the deleted rows' heartbeats go to pulse_last_seen in the same statement.
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
 * shard, each of which walks only that key range of its primary key. Expired means older than the
 * greater of `olderThanSeconds` and the shared online threshold (read FOR SHARE in the caller's
 * transaction): no setting of any process lets the sweep delete a row the API counts online. With
 * last seen on, the deleted rows' heartbeats go to pulse_last_seen in the same statement.
 */
export async function sweepExpiredRange(
  db: Executor,
  options: { after: string; upTo: string; olderThanSeconds: number },
): Promise<number> {
  const settings = await readPresenceSettings(db, { forShare: true });
  const olderThan = Math.max(options.olderThanSeconds, settings.onlineThresholdSeconds);
  const { rows } = await removeAndLog(
    sql`DELETE FROM pulse
        WHERE user_id > ${options.after}::bigint AND user_id <= ${options.upTo}::bigint
          AND last_hb < now() - make_interval(secs => ${olderThan})
        RETURNING user_id, last_hb, online_since`,
    'sweep',
    sql.lit(settings.lastSeenEnabled),
  ).execute(db);
  return (rows[0] as { deleted: number } | undefined)?.deleted ?? 0;
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
 * Deletes up to about `batchSize` of the oldest pulse_last_seen entries older than the retention
 * (oldest first, along the last_seen index: never a scan of the table). Returns how many it
 * deleted and whether older entries remain. `before` is the retention cutoff of the whole trim.
 */
export async function trimLastSeenBatch(
  db: Executor,
  options: { before: Date; batchSize: number },
): Promise<{ deleted: number; more: boolean }> {
  const bound = await db
    .selectFrom('pulse_last_seen')
    .select(sql<string>`last_seen::text`.as('at'))
    .where('last_seen', '<', options.before)
    .orderBy('last_seen')
    .offset(options.batchSize - 1)
    .limit(1)
    .executeTakeFirst();
  let query = db.deleteFrom('pulse_last_seen').where('last_seen', '<', options.before);
  if (bound) query = query.where('last_seen', '<=', sql<Date>`${bound.at}::timestamptz`);
  const result = await query.executeTakeFirst();
  return { deleted: Number(result.numDeletedRows), more: bound !== undefined };
}

/** The retention cutoff by the database clock: entries last seen before it are trimmed. */
export async function lastSeenCutoff(db: Executor): Promise<Date> {
  const { rows } = await sql<{ cutoff: Date }>`
    SELECT now() - make_interval(days => last_seen_retention_days) AS cutoff
    FROM pulse_settings WHERE id = 1`.execute(db);
  const cutoff = rows[0]?.cutoff;
  if (!cutoff) throw new Error('pulse_settings has no row: run npm run migrate');
  return cutoff;
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

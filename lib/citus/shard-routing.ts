/**
 * Groups user ids by the Citus shard that holds them, so a statement over many ids can be sent as
 * one statement per shard, each routed to exactly one shard with only that shard's ids.
 *
 * Why: Citus prunes `user_id = ANY($1)` to the shards holding any of the ids, then sends the whole
 * array to each of them. 1,000 random ids over 32 shards touch every shard, and every shard probes
 * its index for all 1,000 ids (32,000 probes). Split by shard, each statement has about 31 ids,
 * names one shard, and takes Citus's fast path (no distributed planning).
 *
 * The grouping happens in this process, with no round trip: Citus places a row by PostgreSQL's
 * hash of the distribution column (`hashint8` for bigint, which Citus exposes as `worker_hash`)
 * within the shards' hash ranges (`pg_dist_shard`). The ranges are read from the coordinator and
 * cached for `refreshMs`. A stale cache (shards split or moved meanwhile) only costs speed, never
 * correctness: every statement still filters by its ids, and Citus routes it to wherever they are.
 *
 * When the process has a pool on several nodes (DATABASE_URL lists them, lib/infra/db.ts), the
 * router also knows which node holds each shard's placement (pg_dist_placement, and each node's
 * own group in pg_dist_local_group): `executorFor(group)` sends a shard's statement there, where
 * Citus runs it locally with no hop. A node not known yet, or not in the list, leaves the
 * statement to the rotation over all nodes; Citus routes it wherever the shard is. With such
 * pools it also knows each shard's table names (`shardTablesFor`), for status reads that read
 * them directly on their node.
 *
 * On plain PostgreSQL (no `citus` extension, or the table is not distributed) there are no groups:
 * callers run exactly the statement they always ran.
 */
import { sql, type Kysely } from 'kysely';
import type { DatabaseNode } from '../infra/db.ts';

type NodeDb = DatabaseNode['db'];

/** One hash range of a shard, as in pg_dist_shard (inclusive bounds, int32). */
export interface ShardRange {
  shardId: string;
  min: number;
  max: number;
  /** The node group (pg_dist_placement.groupid) of the shard's active placement, if read. */
  groupId?: number | null;
  /** The shard tables of this range on its node (read only with a pool per node). */
  tables?: ShardTables | undefined;
}

/**
 * One shard of `pulse` and its co-located companions' shards, by table name, plus the node's
 * shard of the pulse_settings reference table: what a statement reads on the node holding them,
 * with no distributed planning (see ShardRouter.shardTablesFor).
 */
export interface ShardTables {
  /** pulse's shard id: the statement checks its placement is still on the node it runs on. */
  shardId: string;
  pulse: string;
  lastSeen: string;
  privacy: string;
  settings: string;
}

const rotl = (x: number, k: number) => ((x << k) | (x >>> (32 - k))) >>> 0;

/** PostgreSQL's hash_uint32 (Bob Jenkins' lookup3 `final` mix of one 32-bit word). */
function hashUint32(k: number): number {
  let a = (0x9e3779b9 + 4 + 3923095 + k) >>> 0;
  let b = (0x9e3779b9 + 4 + 3923095) >>> 0;
  let c = b;
  c = ((c ^ b) - rotl(b, 14)) >>> 0;
  a = ((a ^ c) - rotl(c, 11)) >>> 0;
  b = ((b ^ a) - rotl(a, 25)) >>> 0;
  c = ((c ^ b) - rotl(b, 16)) >>> 0;
  a = ((a ^ c) - rotl(c, 4)) >>> 0;
  b = ((b ^ a) - rotl(a, 14)) >>> 0;
  c = ((c ^ b) - rotl(b, 24)) >>> 0;
  return c;
}

/**
 * PostgreSQL's `hashint8(id)` as a signed int32: the value `worker_hash(id::bigint)` returns and
 * Citus compares with the shards' hash ranges. Exact for every integer a JS number holds exactly.
 */
export function citusHashOfBigint(id: number | bigint): number {
  const value = BigInt.asIntN(64, BigInt(id));
  const lo = Number(value & 0xffffffffn) >>> 0;
  const hi = Number((value >> 32n) & 0xffffffffn) >>> 0;
  const folded = (lo ^ (value >= 0n ? hi : ~hi >>> 0)) >>> 0;
  return hashUint32(folded) | 0;
}

/** Index of the range holding `hash` in `ranges` (sorted by min, covering the int32 space). */
function rangeIndexOf(ranges: readonly ShardRange[], hash: number): number {
  let low = 0;
  let high = ranges.length - 1;
  while (low < high) {
    const mid = (low + high + 1) >> 1;
    if (ranges[mid]!.min <= hash) low = mid;
    else high = mid - 1;
  }
  return low;
}

/** Splits `ids` by shard, keeping each group in the input order; one group when `ranges` is empty. */
export function groupIdsByShard<T extends number>(
  ids: readonly T[],
  ranges: readonly ShardRange[],
): T[][] {
  if (ranges.length <= 1) return ids.length === 0 ? [] : [[...ids]];
  const groups = new Map<number, T[]>();
  for (const id of ids) {
    const index = rangeIndexOf(ranges, citusHashOfBigint(id));
    const group = groups.get(index);
    if (group) group.push(id);
    else groups.set(index, [id]);
  }
  return [...groups.values()];
}

/**
 * The hash ranges of `table`'s shards, sorted; empty when the database has no Citus or the table
 * is not hash-distributed.
 */
export async function readShardRanges<DB>(db: Kysely<DB>, table: string): Promise<ShardRange[]> {
  const { rows: citus } = await sql<{ present: boolean }>`
    SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') AS present`.execute(db);
  if (!citus[0]?.present) return [];
  const { rows } = await sql<{ shardId: string; min: number; max: number; groupId: number | null }>`
    SELECT s.shardid::text AS "shardId", s.shardminvalue::int AS min, s.shardmaxvalue::int AS max,
           (SELECT min(pl.groupid) FROM pg_dist_placement pl
            WHERE pl.shardid = s.shardid AND pl.shardstate = 1) AS "groupId"
    FROM pg_dist_shard s JOIN pg_dist_partition p USING (logicalrelid)
    WHERE s.logicalrelid = to_regclass(${table}) AND p.partmethod = 'h'
    ORDER BY min`.execute(db);
  return rows;
}

/** The companions of pulse a status read reads, by ShardTables key. */
const COMPANIONS = {
  lastSeen: 'pulse_last_seen',
  privacy: 'pulse_privacy',
} as const;

/**
 * The shard tables of each of `ranges` (pulse's), from pg_dist_shard: a companion's shard is
 * taken only when the companion is in pulse's co-location group and its shard has exactly the
 * same hash range; otherwise (or when a table is missing) the range gets none, and its reads
 * take the distributed statement. Names are schema.table, unquoted: Citus names a shard
 * `<table>_<shard id>` (Pulse's table names are far from PostgreSQL's 63-character limit, where
 * Citus would shorten them).
 */
async function readShardTables(
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- reads catalogs only
  db: Kysely<any>,
  ranges: readonly ShardRange[],
): Promise<void> {
  const { rows } = await sql<{
    table: string;
    min: number | null;
    max: number | null;
    colocated: boolean;
    name: string;
  }>`
    SELECT c.relname AS table, s.shardminvalue::int AS min, s.shardmaxvalue::int AS max,
           p.colocationid = (SELECT colocationid FROM pg_dist_partition
                             WHERE logicalrelid = to_regclass('pulse')) AS colocated,
           n.nspname || '.' || c.relname || '_' || s.shardid AS name
    FROM pg_dist_shard s
    JOIN pg_dist_partition p USING (logicalrelid)
    JOIN pg_class c ON c.oid = s.logicalrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE s.logicalrelid = ANY(ARRAY[to_regclass('pulse'), to_regclass('pulse_last_seen'),
                                     to_regclass('pulse_privacy'), to_regclass('pulse_settings')])`.execute(
    db,
  );
  const nameOf = (table: string, range: ShardRange) =>
    rows.find(
      (row) =>
        row.table === table && row.colocated && row.min === range.min && row.max === range.max,
    )?.name;
  const settings = rows.find((row) => row.table === 'pulse_settings')?.name;
  for (const range of ranges) {
    const pulse = nameOf('pulse', range);
    const lastSeen = nameOf(COMPANIONS.lastSeen, range);
    const privacy = nameOf(COMPANIONS.privacy, range);
    range.tables =
      pulse && lastSeen && privacy && settings
        ? { shardId: range.shardId, pulse, lastSeen, privacy, settings }
        : undefined;
  }
}

/** The node group of the node `db` is connected to (0: the coordinator); null if unreadable. */
async function localGroupId(db: NodeDb): Promise<number | null> {
  try {
    const { rows } = await sql<{ groupId: number }>`
      SELECT groupid AS "groupId" FROM pg_dist_local_group`.execute(db);
    return rows[0]?.groupId ?? null;
  } catch {
    return null;
  }
}

/**
 * Caches a table's shard ranges and splits id lists by shard. One per process (per pool); on
 * plain PostgreSQL it answers with a single group after one catalog query per `refreshMs`.
 */
export class ShardRouter {
  private ranges: ShardRange[] = [];
  private loadedAt = -Infinity;
  private loading: Promise<ShardRange[]> | undefined;
  /** Each node's group, once read (it never changes for a node). */
  private readonly groupOfNode = new Map<DatabaseNode, number>();
  /** The node (of `nodes`) holding each group's placements. */
  private nodeOfGroup = new Map<number, DatabaseNode>();

  constructor(
    // eslint-disable-next-line @typescript-eslint/no-explicit-any -- reads catalogs only
    private readonly db: Kysely<any>,
    private readonly table = 'pulse',
    private readonly refreshMs = 60_000,
    /** The process's pools per node: with several, shard statements go where the shard is. */
    private readonly nodes: readonly DatabaseNode[] = [],
  ) {}

  /** The cached ranges, re-read when older than refreshMs (a failed read keeps the old ones). */
  async shardRanges(): Promise<readonly ShardRange[]> {
    if (performance.now() - this.loadedAt < this.refreshMs) return this.ranges;
    this.loading ??= readShardRanges(this.db, this.table)
      .then(async (ranges) => {
        if (ranges.length > 0 && this.nodes.length > 1) {
          await this.learnNodeGroups();
          // Without them reads take the distributed path: slower, never wrong.
          if (this.table === 'pulse') await readShardTables(this.db, ranges).catch(() => undefined);
        }
        this.ranges = ranges;
        this.loadedAt = performance.now();
        return ranges;
      })
      .finally(() => (this.loading = undefined));
    return this.loading;
  }

  /** Asks each node not known yet for its group; a node that does not answer is asked next time. */
  private async learnNodeGroups(): Promise<void> {
    const unknown = this.nodes.filter((node) => !this.groupOfNode.has(node));
    const groups = await Promise.all(unknown.map((node) => localGroupId(node.db)));
    unknown.forEach((node, i) => {
      const group = groups[i];
      if (group !== null && group !== undefined) this.groupOfNode.set(node, group);
    });
    this.nodeOfGroup = new Map([...this.groupOfNode].map(([node, group]) => [group, node]));
  }

  /**
   * The node to run a statement over `group` (ids of one shard, as group() made them) on: the
   * one holding that shard, when this process has a pool there; undefined otherwise (any node).
   * `read`: its pool for reads that return rows (lib/infra/db.ts says why), if it has one.
   */
  executorFor(group: readonly number[], purpose: 'write' | 'read' = 'write'): NodeDb | undefined {
    const node = this.placementOf(group)?.node;
    return purpose === 'read' ? (node?.readDb ?? node?.db) : node?.db;
  }

  /** `group`'s shard range and the node of this process holding it, when known. */
  private placementOf(
    group: readonly number[],
  ): { range: ShardRange; node: DatabaseNode } | undefined {
    if (this.nodeOfGroup.size === 0 || group.length === 0) return undefined;
    const range = this.ranges[rangeIndexOf(this.ranges, citusHashOfBigint(group[0]!))];
    const node = range?.groupId == null ? undefined : this.nodeOfGroup.get(range.groupId);
    return range && node ? { range, node } : undefined;
  }

  /**
   * The shard tables of `group`'s shard and the node holding them (the read pool there), for a
   * statement that reads them directly: known only with a pool per node (DATABASE_URL listing
   * the workers). The statement must check the placement is still there (shard moves).
   */
  shardTablesFor(group: readonly number[]): { tables: ShardTables; db: NodeDb } | undefined {
    const placement = this.placementOf(group);
    const tables = placement?.range.tables;
    if (placement === undefined || tables === undefined) return undefined;
    return { tables, db: placement.node.readDb ?? placement.node.db };
  }

  /**
   * Whether the last ranges read put the table on several shards: statements over many ids are
   * then split by shard. Synchronous (no catalog read); false until the first group().
   */
  get routesByShard(): boolean {
    return this.ranges.length > 1;
  }

  /**
   * `ids` split by shard, or null when the table is not distributed (plain PostgreSQL: run the
   * one statement as usual).
   */
  async group<T extends number>(ids: readonly T[]): Promise<T[][] | null> {
    const ranges = await this.shardRanges();
    if (ranges.length === 0) return null;
    return groupIdsByShard(ids, ranges);
  }
}

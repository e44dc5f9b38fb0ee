/**
 * Where Pulse's tables live on a Citus database, and the SQL that puts them there.
 *
 * Every table keyed by `user_id` is hash-distributed by `user_id` and co-located with `pulse`
 * (shard n of each holds the same users, so statements joining them by user stay on one shard).
 * The small shared tables (settings, leases, the migrator's own) are reference tables: a copy on
 * every node, so any node can serve every statement, and a statement on a distributed table
 * that reads the settings row stays routed to one shard.
 *
 * On plain PostgreSQL (no `citus` extension in the database) every function here is a no-op, so
 * migrations, readiness and the stores run unchanged there.
 */
import { sql, type Kysely } from 'kysely';

/**
 * The one list of tables distributed by `user_id`, the co-location anchor first. A table that does
 * not exist (yet) is skipped, so a migration that adds a companion table only has to add its name
 * here; `npm run migrate` then distributes it.
 */
export const USER_KEYED_TABLES = [
  'pulse',
  'pulse_last_seen',
  'pulse_events',
  'pulse_privacy',
  'pulse_visibility_changes',
] as const;

const ANCHOR = USER_KEYED_TABLES[0];

/**
 * Small tables every node must read and write: reference tables on Citus. The migrator's own
 * tables are listed too, so readiness can check the migrations from a worker. A table that does
 * not exist (yet) is skipped.
 */
export const SHARED_TABLES = [
  'pulse_settings',
  'pulse_sweeper_lease',
  'pulse_job_leases',
  'kysely_migration',
  'kysely_migration_lock',
] as const;

/** Kysely creates these at the first migration run, inside no migration of ours. */
export const MIGRATOR_TABLES = ['kysely_migration', 'kysely_migration_lock'] as const;

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- used by migrations on any schema
type AnyDb = Kysely<any>;

/** True when the database has the `citus` extension (the coordinator of a Citus cluster). */
export async function hasCitus(db: AnyDb): Promise<boolean> {
  const { rows } = await sql<{ citus: boolean }>`
    SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') AS citus`.execute(db);
  return rows[0]?.citus === true;
}

interface TableLayout {
  name: string;
  /** 'h' hash-distributed, 'n' or others: not distributed by hash; null: a plain local table. */
  method: string | null;
  distributionColumn: string | null;
  colocationId: number | null;
}

/** How each listed table that exists is laid out; call only on a Citus database. */
async function readLayout(db: AnyDb): Promise<TableLayout[]> {
  const { rows } = await sql<TableLayout>`
    SELECT t.name,
           p.partmethod::text AS method,
           CASE WHEN p.partkey IS NULL THEN NULL
                ELSE column_to_column_name(p.logicalrelid, p.partkey) END AS "distributionColumn",
           p.colocationid AS "colocationId"
    FROM unnest(${[...USER_KEYED_TABLES]}::text[]) WITH ORDINALITY AS t(name, position)
    LEFT JOIN pg_dist_partition p ON p.logicalrelid = to_regclass(t.name)
    WHERE to_regclass(t.name) IS NOT NULL
    ORDER BY t.position`.execute(db);
  return rows;
}

/**
 * The listed tables that are not laid out as Pulse needs on this Citus database (not distributed
 * by hash of user_id, or not co-located with `pulse`), each with the reason. Empty on plain
 * PostgreSQL.
 */
export async function findMisplacedTables(db: AnyDb): Promise<string[]> {
  if (!(await hasCitus(db))) return [];
  const layout = await readLayout(db);
  const anchor = layout.find((t) => t.name === ANCHOR);
  const problems: string[] = [];
  for (const table of layout) {
    if (table.method !== 'h' || table.distributionColumn !== 'user_id') {
      problems.push(`${table.name} is not distributed by user_id`);
    } else if (table.colocationId !== anchor?.colocationId) {
      problems.push(`${table.name} is not co-located with ${ANCHOR}`);
    }
  }
  return problems;
}

/**
 * Distributes every listed table that exists and is still local, co-located with `pulse`.
 * Idempotent; a no-op on plain PostgreSQL. The shard count is the database's
 * `citus.shard_count` (see docs/citus.md). Returns the tables it distributed.
 */
export async function distributeUserKeyedTables(db: AnyDb): Promise<string[]> {
  if (!(await hasCitus(db))) return [];
  const distributed: string[] = [];
  const layout = await readLayout(db);
  // `pulse` made local again alone joins its companions still distributed (their shard count and
  // group), not the database's default group, which may be another one.
  const companion = layout.find(
    (t) => t.name !== ANCHOR && t.method === 'h' && t.distributionColumn === 'user_id',
  );
  for (const table of layout) {
    if (table.method !== null) continue;
    const colocateWith = table.name === ANCHOR ? (companion?.name ?? 'default') : ANCHOR;
    await sql`SELECT create_distributed_table(${table.name}::regclass, 'user_id',
      colocate_with => ${colocateWith})`.execute(db);
    distributed.push(table.name);
  }
  return distributed;
}

/**
 * Turns every listed distributed table back into a local table on the coordinator, companions
 * first (the anchor last). Idempotent; a no-op on plain PostgreSQL. Returns the tables it moved.
 */
export async function undistributeUserKeyedTables(db: AnyDb): Promise<string[]> {
  if (!(await hasCitus(db))) return [];
  const undistributed: string[] = [];
  for (const table of (await readLayout(db)).reverse()) {
    if (table.method === null) continue;
    await sql`SELECT undistribute_table(${table.name}::regclass)`.execute(db);
    undistributed.push(table.name);
  }
  return undistributed;
}

/** Each listed shared table that exists, and whether it is already a reference table. */
async function readSharedLayout(
  db: AnyDb,
  tables: readonly string[],
): Promise<Array<{ name: string; reference: boolean }>> {
  const { rows } = await sql<{ name: string; reference: boolean }>`
    SELECT t.name, coalesce(p.partmethod = 'n' AND p.repmodel = 't', false) AS reference
    FROM unnest(${[...tables]}::text[]) WITH ORDINALITY AS t(name, position)
    LEFT JOIN pg_dist_partition p ON p.logicalrelid = to_regclass(t.name)
    WHERE to_regclass(t.name) IS NOT NULL
    ORDER BY t.position`.execute(db);
  return rows;
}

/** The listed shared tables that exist and are not reference tables. Empty on plain PostgreSQL. */
export async function findUnsharedTables(
  db: AnyDb,
  tables: readonly string[] = SHARED_TABLES,
): Promise<string[]> {
  if (!(await hasCitus(db))) return [];
  const layout = await readSharedLayout(db, tables);
  return layout.filter((t) => !t.reference).map((t) => `${t.name} is not a reference table`);
}

/**
 * Makes every listed shared table that exists a reference table (a copy on every node).
 * Idempotent; a no-op on plain PostgreSQL. Returns the tables it changed.
 */
export async function shareSmallTables(
  db: AnyDb,
  tables: readonly string[] = SHARED_TABLES,
): Promise<string[]> {
  if (!(await hasCitus(db))) return [];
  const changed: string[] = [];
  for (const table of await readSharedLayout(db, tables)) {
    if (table.reference) continue;
    await sql`SELECT create_reference_table(${table.name}::regclass)`.execute(db);
    changed.push(table.name);
  }
  return changed;
}

/** Turns every listed reference table back into a local table on the coordinator. */
export async function unshareSmallTables(
  db: AnyDb,
  tables: readonly string[] = SHARED_TABLES,
): Promise<string[]> {
  if (!(await hasCitus(db))) return [];
  const changed: string[] = [];
  for (const table of await readSharedLayout(db, tables)) {
    if (!table.reference) continue;
    await sql`SELECT undistribute_table(${table.name}::regclass)`.execute(db);
    changed.push(table.name);
  }
  return changed;
}

/** True when `table` is a Citus distributed table in this database (false on plain PostgreSQL). */
export async function isDistributed(db: AnyDb, table: string): Promise<boolean> {
  if (!(await hasCitus(db))) return false;
  const { rows } = await sql<{ distributed: boolean }>`
    SELECT EXISTS (SELECT 1 FROM pg_dist_partition
                   WHERE logicalrelid = to_regclass(${table}) AND partmethod = 'h') AS distributed`.execute(
    db,
  );
  return rows[0]?.distributed === true;
}

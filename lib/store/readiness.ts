import { sql, type Kysely } from 'kysely';
import { findMisplacedTables, findUnsharedTables } from '../citus/citus-layout.ts';
import { isDatabaseUnavailable } from '../infra/db.ts';
import { createMigrator } from './migrator.ts';
import { SettingsMissingError } from './pulse-store.ts';

export type Readiness = { ready: true } | { ready: false; reason: string };

/** Every table the API and the sweeper read or write (lib/store/schema.ts). */
const REQUIRED_TABLES = [
  'pulse',
  'pulse_sweeper_lease',
  'pulse_settings',
  'pulse_last_seen',
  'pulse_events',
  'pulse_job_leases',
  'pulse_privacy',
  'pulse_visibility_changes',
];

/** SQLSTATE of a lock not granted within lock_timeout. */
const LOCK_NOT_AVAILABLE = '55P03';

/** How long the whole check may take: a probe that waits is itself the answer (not ready). */
export const READINESS_TIMEOUT_MS = 2_000;

/**
 * Ready when the database answers within `timeoutMs`, every migration in migrations/ is applied,
 * every table Pulse uses exists (a table dropped or renamed after its migration ran is not ready
 * either), the shared settings row exists (without it nobody can be told online), a heartbeat could
 * take its lock on `pulse` within that time (a table locked by a
 * migration or by hand answers SELECT 1 but makes every write wait) and, on a Citus database,
 * every table keyed by user_id is distributed and co-located with `pulse` and every shared table
 * is a reference table (so the check answers the same on any node).
 */
export async function checkReadiness<DB>(
  db: Kysely<DB>,
  timeoutMs = READINESS_TIMEOUT_MS,
): Promise<Readiness> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<Readiness>((resolve) => {
    timer = setTimeout(
      () => resolve({ ready: false, reason: `the database did not answer within ${timeoutMs} ms` }),
      timeoutMs,
    );
  });
  try {
    return await Promise.race([check(db, timeoutMs), late]);
  } finally {
    clearTimeout(timer);
  }
}

/** One node's readiness, named `host:port` as DATABASE_URL lists it. */
export type NodeReadiness = { node: string } & Readiness;

/**
 * Readiness of a process whose DATABASE_URL lists several Citus nodes: checkReadiness on each, at
 * once. Ready while at least one node is: statements go to the nodes that answer and a worker
 * down fails only the users on its shards, so taking every API out of service for it would turn
 * one node's failure into an outage. Each node's state is in `nodes`.
 */
export async function checkNodesReadiness<DB>(
  nodes: ReadonlyArray<{ name: string; db: Kysely<DB> }>,
  timeoutMs = READINESS_TIMEOUT_MS,
): Promise<Readiness & { nodes: NodeReadiness[] }> {
  const each = await Promise.all(
    nodes.map(async (node) => ({ node: node.name, ...(await checkReadiness(node.db, timeoutMs)) })),
  );
  if (each.some((n) => n.ready)) return { ready: true, nodes: each };
  const reason = each.map((n) => `${n.node}: ${n.ready ? 'ready' : n.reason}`).join('; ');
  return { ready: false, reason, nodes: each };
}

async function check<DB>(db: Kysely<DB>, timeoutMs: number): Promise<Readiness> {
  try {
    await sql`SELECT 1`.execute(db);
    const pending = (await (await createMigrator(db)).getMigrations()).filter((m) => !m.executedAt);
    if (pending.length > 0) {
      return {
        ready: false,
        reason: `migrations pending: ${pending.map((m) => m.name).join(', ')}`,
      };
    }
    // to_regclass follows the connection's search_path, as the application's own queries do.
    const { rows } = await sql<{ name: string }>`
      SELECT name FROM unnest(${REQUIRED_TABLES}::text[]) AS name
      WHERE to_regclass(quote_ident(name)) IS NULL`.execute(db);
    if (rows.length > 0) {
      return { ready: false, reason: `tables missing: ${rows.map((r) => r.name).join(', ')}` };
    }
    const settings = await sql`SELECT 1 FROM pulse_settings WHERE id = 1`.execute(db);
    if (settings.rows.length === 0) {
      return { ready: false, reason: new SettingsMissingError().message };
    }
    // The lock every heartbeat takes, then given back at once: nothing is written.
    const locked = await db.transaction().execute(async (trx) => {
      // Half the time: the lock's own answer comes before the check as a whole gives up.
      const lockTimeout = `${Math.max(1, Math.floor(timeoutMs / 2))}ms`;
      // On Citus, LOCK TABLE on a distributed table is sent to every node: one worker down would
      // make every node unready. The probe stays on this node (a placeholder setting elsewhere).
      await sql`SELECT set_config('lock_timeout', ${lockTimeout}, true),
                       set_config('citus.enable_ddl_propagation', 'off', true)`.execute(trx);
      try {
        await sql`LOCK TABLE pulse IN ROW EXCLUSIVE MODE`.execute(trx);
        return false;
      } catch (error) {
        if ((error as { code?: unknown }).code === LOCK_NOT_AVAILABLE) return true;
        throw error;
      }
    });
    if (locked) {
      return { ready: false, reason: 'the pulse table is locked: heartbeats would wait' };
    }
    const misplaced = [...(await findMisplacedTables(db)), ...(await findUnsharedTables(db))];
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

import type { Kysely } from 'kysely';
import { shareSmallTables, unshareSmallTables } from '../lib/citus/citus-layout.ts';

/*
 * On a Citus coordinator, the small tables every Pulse process reads or writes (pulse_settings,
 * pulse_sweeper_lease, pulse_job_leases) become reference tables: a copy on every node, so a
 * process connected to any node works, and a routed statement that reads the settings row stays
 * on its shard. The migrator's own tables follow right after the run (lib/store/migrator.ts): they
 * are written by this very run. On plain PostgreSQL this migration changes nothing.
 */
const TABLES = ['pulse_settings', 'pulse_sweeper_lease', 'pulse_job_leases'];

export async function up(db: Kysely<any>): Promise<void> {
  await shareSmallTables(db, TABLES);
}

export async function down(db: Kysely<any>): Promise<void> {
  await unshareSmallTables(db, TABLES);
}

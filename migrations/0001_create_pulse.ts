import { sql, type Kysely } from 'kysely';

/*
 * fillfactor 80 leaves room on each page so a heartbeat's UPDATE stays HOT (heap-only: no index
 * write, dead tuple pruned on the page). There is deliberately no index on last_hb: one would
 * make every heartbeat a non-HOT update. The autovacuum settings make vacuum keep pace with a
 * table whose every row is rewritten every 10-20 seconds.
 */
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema
    .createTable('pulse')
    .addColumn('user_id', 'bigint', (col) => col.primaryKey())
    .addColumn('last_hb', 'timestamptz', (col) => col.notNull().defaultTo(sql`now()`))
    .modifyEnd(
      sql`WITH (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.05, autovacuum_analyze_scale_factor = 0.05, autovacuum_vacuum_cost_delay = 0)`,
    )
    .execute();
}

export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.dropTable('pulse').execute();
}

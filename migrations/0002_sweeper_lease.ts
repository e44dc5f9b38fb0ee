import { sql, type Kysely } from 'kysely';

/*
 * One row (id = 1) saying which sweeper process owns the current sweep and until when. See
 * lib/store/sweep-lease.ts for how it is taken, renewed inside every batch transaction, and released.
 * The row is created by the first sweeper that takes the lease (INSERT ... ON CONFLICT).
 */
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema
    .createTable('pulse_sweeper_lease')
    .addColumn('id', 'integer', (col) => col.primaryKey().check(sql`id = 1`))
    .addColumn('holder', 'text')
    .addColumn('renewed_at', 'timestamptz', (col) => col.notNull().defaultTo(sql`now()`))
    .addColumn('expires_at', 'timestamptz', (col) => col.notNull())
    .execute();
}

export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.dropTable('pulse_sweeper_lease').execute();
}

/* eslint-disable @typescript-eslint/no-explicit-any -- the Migrator works on any schema */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  FileMigrationProvider,
  Migrator,
  sql,
  type Migration,
  type MigrationProvider,
  type MigrationResultSet,
  type Kysely,
} from 'kysely';
import { distributeUserKeyedTables, hasCitus, shareSmallTables } from '../citus/citus-layout.ts';

/** migrations/ at the top of the tree (in the source tree and in dist/ alike). */
const migrationFolder = fileURLToPath(new URL('../../migrations', import.meta.url));

/**
 * The migrator, keeping its own tables in the connection's current schema (the first schema of
 * search_path that exists), where the migrations create Pulse's tables. Without a schema, Kysely
 * takes a kysely_migration table in any schema of the database as its own, then reads the one
 * search_path finds: a fresh schema in a database migrated elsewhere looked migrated, or failed.
 */
export async function createMigrator(db: Kysely<any>): Promise<Migrator> {
  const { rows } = await sql<{ schema: string | null }>`SELECT current_schema() AS schema`.execute(
    db,
  );
  const schema = rows[0]?.schema ?? undefined;
  const files = new FileMigrationProvider({ fs, path, migrationFolder });
  return new Migrator({
    db,
    provider: (await hasCitus(db)) ? new SequentialOnCitus(files) : files,
    ...(schema === undefined ? {} : { migrationTableSchema: schema }),
  });
}

/**
 * Kysely runs all pending migrations in one transaction. On Citus, a statement that touches
 * several shards runs over parallel connections, and after that the transaction can no longer
 * propagate DDL such as CREATE FUNCTION ("there was a parallel operation on a distributed table
 * in the transaction"). Each migration therefore starts by switching the transaction to Citus's
 * sequential mode (one connection per worker), before any of them touched a shard.
 */
class SequentialOnCitus implements MigrationProvider {
  constructor(private readonly files: MigrationProvider) {}

  async getMigrations(): Promise<Record<string, Migration>> {
    const sequential =
      (step: Migration['up']): Migration['up'] =>
      async (db) => {
        await sql`SET LOCAL citus.multi_shard_modify_mode TO 'sequential'`.execute(db);
        await step(db);
      };
    const wrapped: Record<string, Migration> = {};
    for (const [name, migration] of Object.entries(await this.files.getMigrations())) {
      const down = migration.down?.bind(migration);
      wrapped[name] = {
        up: sequential(migration.up.bind(migration)),
        ...(down === undefined ? {} : { down: sequential(down) }),
      };
    }
    return wrapped;
  }
}

/** Raises the migrator's own error (it carries the cause) when a run failed. */
export function throwIfFailed({ error, results }: MigrationResultSet): void {
  if (error === undefined) return;
  const failed = results?.find((r) => r.status === 'Error')?.migrationName;
  const reason = error instanceof Error ? error.message : JSON.stringify(error);
  throw new Error(
    failed ? `migration ${failed} failed: ${reason}` : `migrations failed: ${reason}`,
    {
      cause: error,
    },
  );
}

export interface MigrationRun {
  /** Migrations applied by this run. */
  applied: string[];
  /** On Citus: tables keyed by user_id that were still local and are now distributed. */
  distributed: string[];
  /** On Citus: shared tables that were not yet reference tables and now are. */
  shared: string[];
}

/**
 * Applies every pending migration, then, on Citus, puts every table where it belongs: a table
 * keyed by user_id still local (the extension came after the migrations, or a newer migration
 * added one) is distributed, and a shared table that is not a reference table yet (the
 * migrator's own, created outside any migration) becomes one. Concurrent callers are safe: the
 * Migrator takes a lock, and the placement is idempotent.
 */
export async function runMigrations(db: Kysely<any>): Promise<MigrationRun> {
  const resultSet = await (await createMigrator(db)).migrateToLatest();
  throwIfFailed(resultSet);
  const applied = (resultSet.results ?? []).map((r) => r.migrationName);
  const distributed = await distributeUserKeyedTables(db);
  const shared = await shareSmallTables(db);
  return { applied, distributed, shared };
}

/** runMigrations, answering the migrations applied. */
export async function migrateToLatest(db: Kysely<any>): Promise<string[]> {
  return (await runMigrations(db)).applied;
}

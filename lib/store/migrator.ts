/* eslint-disable @typescript-eslint/no-explicit-any -- the Migrator works on any schema */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { FileMigrationProvider, Migrator, type MigrationResultSet, type Kysely } from 'kysely';

/** migrations/ at the top of the tree (in the source tree and in dist/ alike). */
const migrationFolder = fileURLToPath(new URL('../../migrations', import.meta.url));

export function createMigrator(db: Kysely<any>): Migrator {
  return new Migrator({
    db,
    provider: new FileMigrationProvider({ fs, path, migrationFolder }),
  });
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

/** Applies every pending migration. Concurrent callers are safe: the Migrator takes a lock. */
export async function migrateToLatest(db: Kysely<any>): Promise<string[]> {
  const resultSet = await createMigrator(db).migrateToLatest();
  throwIfFailed(resultSet);
  return (resultSet.results ?? []).map((r) => r.migrationName);
}

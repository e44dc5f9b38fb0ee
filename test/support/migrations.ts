import { readdirSync } from 'node:fs';

/** The migrations in migrations/, oldest first, as the migrator names them. */
export const MIGRATION_NAMES = readdirSync(new URL('../../migrations/', import.meta.url))
  .filter((file) => /^\d{4}_.*\.ts$/.test(file))
  .map((file) => file.replace(/\.ts$/, ''))
  .sort();

/** The migrations newer than `name`, newest first: what `migrate down` undoes before it. */
export const migrationsNewerThan = (name: string): string[] =>
  MIGRATION_NAMES.filter((other) => other > name).reverse();

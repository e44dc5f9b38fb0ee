/**
 * npm run migrate            apply every pending migration
 * npm run migrate -- down    undo the last applied migration
 * npm run migrate -- status  list applied and pending migrations
 *
 * Safe to run from several pods at once: Kysely's Migrator serializes runs with a lock.
 */
import { parseArgs } from 'node:util';
import { loadMigrateConfig } from '../lib/config.ts';
import { openDatabase } from '../lib/db.ts';
import { runMain } from '../lib/entry.ts';
import { createProcessLogger } from '../lib/logger.ts';
import { createMigrator, migrateToLatest, throwIfFailed } from '../lib/migrator.ts';
import { setPulseTableUnlogged } from '../lib/pulse-store.ts';

runMain(async () => {
  const { positionals } = parseArgs({ allowPositionals: true });
  const command = positionals[0] ?? 'latest';
  if (!['latest', 'down', 'status'].includes(command)) {
    throw new Error(`unknown migrate command "${command}" (use latest, down or status)`);
  }
  const config = loadMigrateConfig(process.env);
  const logger = createProcessLogger('pulse-migrate', config.LOG_LEVEL, config.LOG_FORMAT);
  const database = openDatabase({
    connectionString: config.DATABASE_URL,
    poolMax: 2,
    applicationName: 'pulse-migrate',
    logger,
  });
  try {
    const migrator = createMigrator(database.db);
    if (command === 'status') {
      for (const m of await migrator.getMigrations()) {
        const state = m.executedAt ? `applied ${m.executedAt.toISOString()}` : 'pending';
        console.log(`${m.name}  ${state}`);
      }
    } else if (command === 'down') {
      const resultSet = await migrator.migrateDown();
      throwIfFailed(resultSet);
      const undone = resultSet.results?.map((r) => r.migrationName) ?? [];
      console.log(undone.length ? `reverted ${undone.join(', ')}` : 'nothing to revert');
    } else {
      const applied = await migrateToLatest(database.db);
      console.log(applied.length ? `applied ${applied.join(', ')}` : 'already up to date');
      const unlogged = config.PULSE_TABLE_UNLOGGED;
      if (unlogged !== undefined && (await setPulseTableUnlogged(database.db, unlogged))) {
        console.log(`table pulse is now ${unlogged ? 'UNLOGGED' : 'LOGGED'}`);
      }
    }
  } finally {
    await database.close();
  }
});

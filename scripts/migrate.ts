/**
 * npm run migrate            apply every pending migration
 * npm run migrate -- down    undo the last applied migration
 * npm run migrate -- status  list applied and pending migrations
 *
 * After migrating, writes ONLINE_THRESHOLD_SECONDS, LAST_SEEN_ENABLED, LAST_SEEN_RETENTION_DAYS and
 * EVENT_RETENTION_DAYS into pulse_settings when they are set (the rules the API and the sweeper
 * read live).
 *
 * Safe to run from several pods at once: Kysely's Migrator serializes runs with a lock.
 */
import { parseArgs } from 'node:util';
import { loadMigrateConfig } from '../lib/infra/config.ts';
import { openDatabase } from '../lib/infra/db.ts';
import { runMain } from '../lib/infra/entry.ts';
import { createProcessLogger } from '../lib/infra/logger.ts';
import { createMigrator, runMigrations, throwIfFailed } from '../lib/store/migrator.ts';
import {
  readPresenceSettings,
  restoreSettingsRow,
  setPulseTableUnlogged,
  updatePresenceSettings,
} from '../lib/store/pulse-store.ts';
import { firstNodeUrl } from '../lib/infra/database-url.ts';

runMain(async () => {
  const { positionals } = parseArgs({ allowPositionals: true });
  const command = positionals[0] ?? 'latest';
  if (!['latest', 'down', 'status'].includes(command)) {
    throw new Error(`unknown migrate command "${command}" (use latest, down or status)`);
  }
  const config = loadMigrateConfig(process.env);
  const logger = createProcessLogger('pulse-migrate', config.LOG_LEVEL, config.LOG_FORMAT);
  const database = openDatabase({
    // DATABASE_URL may list several Citus nodes: this process uses the first (docs/citus.md).
    connectionString: firstNodeUrl(config.DATABASE_URL),
    poolMax: 2,
    applicationName: 'pulse-migrate',
    logger,
  });
  try {
    const migrator = await createMigrator(database.db);
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
      const { applied, distributed, shared } = await runMigrations(database.db);
      console.log(applied.length ? `applied ${applied.join(', ')}` : 'already up to date');
      // Deleted by hand, the row would leave every reader refused (503 settings_missing).
      if (await restoreSettingsRow(database.db)) {
        console.log('pulse_settings had no row: restored with its defaults');
      }
      // On Citus: tables listed in lib/citus/citus-layout.ts that were not placed yet.
      if (distributed.length > 0) console.log(`distributed by user_id: ${distributed.join(', ')}`);
      if (shared.length > 0) console.log(`reference tables: ${shared.join(', ')}`);
      const unlogged = config.PULSE_TABLE_UNLOGGED;
      if (unlogged !== undefined && (await setPulseTableUnlogged(database.db, unlogged))) {
        console.log(`table pulse is now ${unlogged ? 'UNLOGGED' : 'LOGGED'}`);
      }
      const changed = await updatePresenceSettings(database.db, {
        onlineThresholdSeconds: config.ONLINE_THRESHOLD_SECONDS,
        lastSeenEnabled: config.LAST_SEEN_ENABLED,
        lastSeenRetentionDays: config.LAST_SEEN_RETENTION_DAYS,
        eventRetentionDays: config.EVENT_RETENTION_DAYS,
      });
      if (changed.length > 0) {
        const s = await readPresenceSettings(database.db);
        console.log(
          `pulse_settings updated: online_threshold_seconds=${s.onlineThresholdSeconds} last_seen_enabled=${s.lastSeenEnabled} last_seen_retention_days=${s.lastSeenRetentionDays} event_retention_days=${s.eventRetentionDays}`,
        );
      }
    }
  } finally {
    await database.close();
  }
});

import { parseArgs } from 'node:util';
import { loadSweeperConfig } from '../lib/config.ts';
import { openDatabase } from '../lib/db.ts';
import { runMain } from '../lib/entry.ts';
import { createLogger } from '../lib/logger.ts';
import { GracefulShutdown } from '../lib/shutdown.ts';
import { Sweeper } from './sweeper.ts';

runMain(async () => {
  const { values } = parseArgs({ options: { once: { type: 'boolean', default: false } } });
  const config = loadSweeperConfig(process.env);
  const logger = createLogger('pulse-sweeper', config.LOG_LEVEL);
  const database = openDatabase({
    connectionString: config.DATABASE_URL,
    poolMax: config.PG_POOL_MAX,
    applicationName: 'pulse-sweeper',
    logger,
  });
  const sweeper = new Sweeper(database.db, logger, {
    schedule: config.SWEEP_SCHEDULE,
    olderThanSeconds: config.SWEEP_OLDER_THAN_SECONDS,
    batchSize: config.SWEEP_BATCH_SIZE,
  });

  if (values.once) {
    try {
      const report = await sweeper.sweepOnce();
      process.stdout.write(`${JSON.stringify(report)}\n`);
    } finally {
      await database.close();
    }
    return;
  }

  const shutdown = new GracefulShutdown(logger, config.SHUTDOWN_TIMEOUT_SECONDS);
  shutdown.listen();
  shutdown.add('database pool', () => database.close());
  shutdown.add('sweeper', () => sweeper.stop());
  sweeper.start();
  logger.info({ schedule: config.SWEEP_SCHEDULE, olderThanSeconds: config.SWEEP_OLDER_THAN_SECONDS }, 'pulse sweeper started');
});

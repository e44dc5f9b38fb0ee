import { parseArgs } from 'node:util';
import { loadSweeperConfig } from '../lib/config.ts';
import { DEFAULT_STATEMENT_TIMEOUT_MS, openDatabase } from '../lib/db.ts';
import { runMain } from '../lib/entry.ts';
import { createLogger } from '../lib/logger.ts';
import { createRegistry } from '../lib/metrics.ts';
import { GracefulShutdown } from '../lib/shutdown.ts';
import { createSweeperMetrics } from './metrics.ts';
import { startOpsServer } from '../http/ops-server.ts';
import { Sweeper } from './sweeper.ts';

/**
 * npm run sweeper              sweep on SWEEP_SCHEDULE until SIGTERM/SIGINT
 * npm run sweeper -- --once    one sweep; prints its report as one JSON line (exit 1 if it failed)
 */
runMain(async () => {
  const { values } = parseArgs({ options: { once: { type: 'boolean', default: false } } });
  const config = loadSweeperConfig(process.env);
  const logger = createLogger('pulse-sweeper', config.LOG_LEVEL);
  const sweeperOptions = {
    schedule: config.SWEEP_SCHEDULE,
    olderThanSeconds: config.SWEEP_OLDER_THAN_SECONDS,
    batchSize: config.SWEEP_BATCH_SIZE,
    lockTtlSeconds: config.SWEEP_LOCK_TTL_SECONDS,
    batchPauseMs: config.SWEEP_BATCH_PAUSE_MS,
  };
  const database = openDatabase({
    connectionString: config.DATABASE_URL,
    poolMax: config.PG_POOL_MAX,
    applicationName: 'pulse-sweeper',
    logger,
    statementTimeoutMs: DEFAULT_STATEMENT_TIMEOUT_MS,
  });
  const registry = createRegistry(database.pool);
  const sweeper = new Sweeper(database.db, logger, {
    ...sweeperOptions,
    onSweep: createSweeperMetrics(registry),
  });

  if (values.once) {
    // SIGTERM during a one-off sweep: finish the current batch, print the report, exit 0.
    const stop = () => void sweeper.stop();
    process.once('SIGTERM', stop).once('SIGINT', stop);
    try {
      const report = await sweeper.sweepOnce();
      process.stdout.write(`${JSON.stringify(report)}\n`);
      if (report.outcome === 'failed') process.exitCode = 1;
    } finally {
      await database.close();
    }
    return;
  }

  const shutdown = new GracefulShutdown(logger, config.SHUTDOWN_TIMEOUT_SECONDS);
  shutdown.listen();
  shutdown.add('database pool', () => database.close());
  const ops = await startOpsServer({
    db: database.db,
    registry,
    host: config.METRICS_HOST,
    port: config.METRICS_PORT,
  });
  // Steps run in reverse: the sweeper stops, then the probes, then the pool.
  shutdown.add('ops server', () => ops.stop());
  shutdown.add('sweeper', () => sweeper.stop());
  sweeper.start();
  logger.info(
    {
      ...sweeperOptions,
      holder: sweeper.holder,
      metrics: `http://${config.METRICS_HOST}:${ops.port}/metrics`,
    },
    'pulse sweeper started',
  );
});

import { parseArgs } from 'node:util';
import { loadSweeperConfig } from '../lib/infra/config.ts';
import {
  DEFAULT_STATEMENT_TIMEOUT_MS,
  isDatabaseUnavailable,
  openDatabase,
} from '../lib/infra/db.ts';
import { runMain } from '../lib/infra/entry.ts';
import { checkStatementTimeout } from '../lib/infra/statement-timeout.ts';
import { createProcessLogger, errorFields } from '../lib/infra/logger.ts';
import { createRegistry } from '../lib/infra/metrics.ts';
import { checkSharedSettings } from '../lib/store/shared-settings-check.ts';
import { GracefulShutdown } from '../lib/infra/shutdown.ts';
import { createSweeperMetrics } from './metrics.ts';
import { startOpsServer } from '../http/ops-server.ts';
import { Sweeper } from './sweeper.ts';
import { createOfflineDetection } from '../lib/presence/group-detectors.ts';
import { checkCitusNode, type CitusNode } from '../lib/citus/citus-node.ts';
import { createDetectorMetrics } from '../lib/presence/detector-metrics.ts';
import { EventRetention } from '../lib/presence/event-retention.ts';
import { openChangeLog } from '../lib/store/node-change-log.ts';
import { ShardRouter } from '../lib/citus/shard-routing.ts';
import { firstNodeUrl } from '../lib/infra/database-url.ts';

/**
 * npm run sweeper              sweep on SWEEP_SCHEDULE until SIGTERM/SIGINT
 * npm run sweeper -- --once    one sweep; prints its report as one JSON line (exit 1 if it failed)
 */
runMain(async () => {
  const { values } = parseArgs({ options: { once: { type: 'boolean', default: false } } });
  const config = loadSweeperConfig(process.env);
  const logger = createProcessLogger('pulse-sweeper', config.LOG_LEVEL, config.LOG_FORMAT);
  const sweeperOptions = {
    schedule: config.SWEEP_SCHEDULE,
    olderThanSeconds: config.SWEEP_OLDER_THAN_SECONDS,
    batchSize: config.SWEEP_BATCH_SIZE,
    leaseTtlSeconds: config.SWEEP_LEASE_TTL_SECONDS,
    batchPauseMs: config.SWEEP_BATCH_PAUSE_MS,
  };
  const database = openDatabase({
    // DATABASE_URL may list several Citus nodes: this process uses the first (docs/citus.md).
    connectionString: firstNodeUrl(config.DATABASE_URL),
    poolMax: config.PG_POOL_MAX,
    applicationName: 'pulse-sweeper',
    logger,
    statementTimeoutMs: DEFAULT_STATEMENT_TIMEOUT_MS,
    preparedStatements: config.DATABASE_PREPARED_STATEMENTS,
  });
  let citusNode: CitusNode;
  try {
    await checkSharedSettings(database.db, config, logger);
    citusNode = await checkCitusNode(database.db, logger);
  } catch (error) {
    await database.close();
    throw error;
  }
  const registry = createRegistry(database.pool);
  const sweeper = new Sweeper(database.db, logger, {
    ...sweeperOptions,
    onSweep: createSweeperMetrics(registry),
  });

  // Signals are handled the same way in both modes: the first SIGTERM/SIGINT lets the current
  // batch finish and exits 0; a second one, or SHUTDOWN_TIMEOUT_SECONDS, forces exit 1.
  const shutdown = new GracefulShutdown(logger, config.SHUTDOWN_TIMEOUT_SECONDS);
  shutdown.listen();
  shutdown.add('database pool', () => database.close());
  void checkStatementTimeout(database.db, DEFAULT_STATEMENT_TIMEOUT_MS, logger);

  if (values.once) {
    shutdown.add('sweeper', () => sweeper.stop());
    const report = await sweeper.sweepOnce();
    process.stdout.write(`${JSON.stringify(report)}\n`);
    if (report.outcome === 'failed') process.exitCode = 1;
    await shutdown.stop();
    return;
  }
  const ops = await startOpsServer({
    db: database.db,
    registry,
    host: config.METRICS_HOST,
    port: config.METRICS_PORT,
  });
  // Steps run in reverse: the jobs stop, then the probes, then the pool.
  shutdown.add('ops server', () => ops.stop());
  shutdown.add('sweeper', () => sweeper.stop());
  sweeper.start();
  // Creating and dropping pulse_events partitions is DDL on a distributed table: on Citus only
  // the coordinator may run it. Sweeping works on any node.
  if (citusNode === 'worker') {
    logger.warn(
      { code: 'retention_needs_coordinator' },
      'connected to a Citus worker: sweeping runs here, change log retention (pulse_events partitions) does not; run one sweeper against the coordinator',
    );
  } else {
    const retention = new EventRetention(database.db, logger, {
      intervalMs: 3_600_000,
      aheadDays: 7,
    });
    shutdown.add('change log retention', () => retention.stop());
    retention.start();
  }
  // On Citus one detector per node group, each reading its node's log (lib/presence/group-detectors.ts).
  if (config.OFFLINE_DETECTOR) {
    const detectorMetrics = createDetectorMetrics(registry);
    const changeLog = openChangeLog(database, citusNode, {
      connectionString: firstNodeUrl(config.DATABASE_URL),
      logger,
      statementTimeoutMs: DEFAULT_STATEMENT_TIMEOUT_MS,
    });
    shutdown.add('change log connections', () => changeLog.close());
    const detector = createOfflineDetection(
      database.db,
      changeLog,
      {
        intervalMs: config.OFFLINE_DETECTOR_INTERVAL_MS,
        leaseTtlSeconds: config.OFFLINE_DETECTOR_LEASE_TTL_SECONDS,
        router: new ShardRouter(database.db),
      },
      {
        ...detectorMetrics.observer,
        // An unavailable database is the outage log's to report (lib/infra/outage-log.ts).
        onError: (error) => {
          if (!isDatabaseUnavailable(error))
            logger.warn({ err: errorFields(error) }, 'offline detection failed');
        },
      },
    );
    detectorMetrics.watch(detector);
    shutdown.add('offline detector', () => detector.stop());
    detector.start();
  }
  logger.info(
    {
      ...sweeperOptions,
      holder: sweeper.holder,
      metrics: `http://${config.METRICS_HOST}:${ops.port}/metrics`,
    },
    'pulse sweeper started',
  );
});

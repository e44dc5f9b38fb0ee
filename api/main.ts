import { loadApiConfig } from '../lib/infra/config.ts';
import { DEFAULT_STATEMENT_TIMEOUT_MS, openDatabaseNodes } from '../lib/infra/db.ts';
import { runMain } from '../lib/infra/entry.ts';
import { checkStatementTimeout } from '../lib/infra/statement-timeout.ts';
import { createProcessLogger } from '../lib/infra/logger.ts';
import { startOpsServer } from '../http/ops-server.ts';
import { httpLimitsOf, listen } from '../http/server.ts';
import { checkSharedSettings } from '../lib/store/shared-settings-check.ts';
import { GracefulShutdown } from '../lib/infra/shutdown.ts';
import { assembleApi } from './assemble.ts';
import { checkCitusNode } from '../lib/citus/citus-node.ts';

runMain(async () => {
  const config = loadApiConfig(process.env);
  const logger = createProcessLogger('pulse-api', config.LOG_LEVEL, config.LOG_FORMAT);
  if (config.AUTH_MODE === 'none') {
    logger.warn(
      "AUTH_MODE=none: requests are not authenticated, anyone can set anyone's status; " +
        'set AUTH_MODE=jwt outside local development',
    );
  }
  const shutdown = new GracefulShutdown(logger, config.SHUTDOWN_TIMEOUT_SECONDS);
  shutdown.listen();

  // A pool per node when DATABASE_URL lists several Citus nodes (docs/citus.md).
  const database = openDatabaseNodes({
    connectionString: config.DATABASE_URL,
    poolMax: config.PG_POOL_MAX,
    applicationName: 'pulse-api',
    logger,
    statementTimeoutMs: DEFAULT_STATEMENT_TIMEOUT_MS,
    preparedStatements: config.DATABASE_PREPARED_STATEMENTS,
  });
  shutdown.add('database pool', () => database.close());
  void checkStatementTimeout(database.db, DEFAULT_STATEMENT_TIMEOUT_MS, logger);
  // The database's online threshold (undefined when it cannot be read yet): held presence's beats.
  const onlineThresholdSeconds = await checkSharedSettings(database.db, config, logger);
  const citusNode = await checkCitusNode(database.db, logger);

  const { app, heartbeats, registry, admission, streams } = assembleApi(database, config, logger, {
    onlineThresholdSeconds,
    citusNode,
  });
  shutdown.add('heartbeat queue', () => heartbeats.close());

  let metrics: string | undefined;
  if (config.METRICS_PORT !== undefined) {
    const ops = await startOpsServer({
      db: database.db,
      nodes: database.nodes,
      registry,
      host: config.METRICS_HOST,
      port: config.METRICS_PORT,
    });
    shutdown.add('metrics server', () => ops.stop());
    metrics = `http://${config.METRICS_HOST}:${ops.port}/metrics`;
  }

  const server = await listen(app, config.PORT, config.HOST, httpLimitsOf(config));
  shutdown.add('http server', () => server.stop());
  // Runs before the server stops: refusals kept back from clients ignoring Retry-After go out now.
  shutdown.add('admission control', () => admission.close());
  // Runs before the server stops (steps run in reverse): open streams would keep it waiting.
  shutdown.add('event streams', () => streams.close());
  logger.info(
    { url: `http://${config.HOST}:${server.port}`, metrics: metrics ?? 'on the API port' },
    'pulse api listening',
  );
});

import { loadApiConfig } from '../lib/config.ts';
import { DEFAULT_STATEMENT_TIMEOUT_MS, openDatabase } from '../lib/db.ts';
import { runMain } from '../lib/entry.ts';
import { createLogger } from '../lib/logger.ts';
import { httpLimitsOf, listen } from '../http/server.ts';
import { GracefulShutdown } from '../lib/shutdown.ts';
import { assembleApi } from './assemble.ts';

runMain(async () => {
  const config = loadApiConfig(process.env);
  const logger = createLogger('pulse-api', config.LOG_LEVEL);
  if (config.AUTH_MODE === 'none') {
    logger.warn(
      "AUTH_MODE=none: requests are not authenticated, anyone can set anyone's status; " +
        'set AUTH_MODE=jwt outside local development',
    );
  }
  const shutdown = new GracefulShutdown(logger, config.SHUTDOWN_TIMEOUT_SECONDS);
  shutdown.listen();

  const database = openDatabase({
    connectionString: config.DATABASE_URL,
    poolMax: config.PG_POOL_MAX,
    applicationName: 'pulse-api',
    logger,
    statementTimeoutMs: DEFAULT_STATEMENT_TIMEOUT_MS,
  });
  shutdown.add('database pool', () => database.close());

  const { app, heartbeats, admission } = assembleApi(database, config, logger);
  shutdown.add('heartbeat queue', () => heartbeats.close());
  shutdown.add('admission control', () => admission.close());

  const server = await listen(app, config.PORT, config.HOST, httpLimitsOf(config));
  shutdown.add('http server', () => server.stop());
  logger.info({ url: `http://${config.HOST}:${config.PORT}` }, 'pulse api listening');
});

import { once } from 'node:events';
import { loadApiConfig } from '../lib/config.ts';
import { openDatabase } from '../lib/db.ts';
import { runMain } from '../lib/entry.ts';
import { createLogger } from '../lib/logger.ts';
import { GracefulShutdown } from '../lib/shutdown.ts';
import { buildApp } from './app.ts';
import { createHeartbeatWriter } from './heartbeat-writer-factory.ts';

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
  });
  shutdown.add('database pool', () => database.close());

  const heartbeats = createHeartbeatWriter(database.db, config);
  shutdown.add('heartbeat queue', () => heartbeats.close());

  const app = buildApp({ db: database.db, heartbeats, logger, config });
  const server = app.listen(config.PORT, config.HOST);
  await once(server, 'listening');
  shutdown.add('http server', async () => {
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    server.closeIdleConnections();
    await closed;
  });
  logger.info({ url: `http://${config.HOST}:${config.PORT}` }, 'pulse api listening');
});

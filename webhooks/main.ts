import { checkCitusNode } from '../lib/citus/citus-node.ts';
import { ConfigError, loadWebhooksConfig } from '../lib/infra/config.ts';
import { isDatabaseUnavailable, openDatabase } from '../lib/infra/db.ts';
import { runMain } from '../lib/infra/entry.ts';
import { createProcessLogger, errorFields } from '../lib/infra/logger.ts';
import { createRegistry } from '../lib/infra/metrics.ts';
import { GracefulShutdown } from '../lib/infra/shutdown.ts';
import { describeResult } from '../lib/webhooks/delivery.ts';
import { WebhookFleet } from '../lib/webhooks/webhook-fleet.ts';
import { startOpsServer } from '../http/ops-server.ts';
import { createHttpSender } from './http-sender.ts';
import { createWebhookMetrics } from './metrics.ts';
import { firstNodeUrl } from '../lib/infra/database-url.ts';

const DELIVERER_STATEMENT_TIMEOUT_MS = 120_000;

/** npm run webhooks: delivers the change log to every enabled endpoint until SIGTERM/SIGINT. */
runMain(async () => {
  const config = loadWebhooksConfig(process.env);
  const logger = createProcessLogger('pulse-webhooks', config.LOG_LEVEL, config.LOG_FORMAT);
  const database = openDatabase({
    // DATABASE_URL may list several Citus nodes: this process uses the first (docs/citus.md).
    connectionString: firstNodeUrl(config.DATABASE_URL),
    poolMax: config.PG_POOL_MAX,
    applicationName: 'pulse-webhooks',
    logger,
    // Longer than the API's: a deliverer back from a long stop reads its backlog in one statement.
    statementTimeoutMs: DELIVERER_STATEMENT_TIMEOUT_MS,
    preparedStatements: config.DATABASE_PREPARED_STATEMENTS,
  });
  // The deliverer tails the change log by transaction snapshot, which is per node on Citus
  // (api/stream/change-source.ts): it would skip transitions there.
  if ((await checkCitusNode(database.db, logger)) !== 'plain') {
    await database.close();
    throw new ConfigError([
      'webhooks do not run on Citus yet: the change log is read by transaction snapshot, and snapshots are per node (docs/citus.md, "The change log")',
    ]);
  }
  const registry = createRegistry(database.pool);
  const metrics = createWebhookMetrics(registry);
  const sender = createHttpSender({
    timeoutMs: config.WEBHOOKS_TIMEOUT_MS,
    responseMaxBytes: config.WEBHOOKS_RESPONSE_MAX_BYTES,
    allowPrivateTargets: config.WEBHOOKS_ALLOW_PRIVATE_TARGETS,
  });
  // An unavailable database is the outage log's to report (lib/infra/outage-log.ts).
  const reportError = (what: string, fields: object, error: unknown) => {
    if (!isDatabaseUnavailable(error)) logger.warn({ ...fields, err: errorFields(error) }, what);
  };
  const fleet = new WebhookFleet(
    database.db,
    sender.send,
    {
      batchMaxEvents: config.WEBHOOKS_BATCH_MAX_EVENTS,
      batchWaitMs: config.WEBHOOKS_BATCH_WAIT_MS,
      backoff: { baseMs: config.WEBHOOKS_RETRY_BASE_MS, maxMs: config.WEBHOOKS_RETRY_MAX_DELAY_MS },
      retryForSeconds: config.WEBHOOKS_RETRY_FOR_SECONDS,
      leaseTtlSeconds: config.WEBHOOKS_LEASE_TTL_SECONDS,
      backlogIntervalMs: config.WEBHOOKS_BACKLOG_INTERVAL_MS,
      refreshMs: config.WEBHOOKS_REFRESH_MS,
      onRefreshError: (error) => reportError('reading the webhook endpoints failed', {}, error),
    },
    {
      ...metrics,
      onAttempt(endpoint, result, durationMs, events) {
        metrics.onAttempt?.(endpoint, result, durationMs, events);
        // Endpoint name and id only: the URL may carry a token in its path, the secret never leaves.
        if (result.outcome !== 'delivered') {
          logger.warn(
            { endpoint: endpoint.name, endpointId: endpoint.id, events: events.length },
            `webhook attempt failed: ${describeResult(result)}; retrying with backoff`,
          );
        }
      },
      onParked(endpoint, batchId, events) {
        metrics.onParked?.(endpoint, batchId, events);
        logger.error(
          { endpoint: endpoint.name, endpointId: endpoint.id, batchId, events },
          'webhook batch parked after retrying for WEBHOOKS_RETRY_FOR_SECONDS (pulse_webhook_parked; docs/webhooks.md says how to replay it)',
        );
      },
      onLease(endpoint, held) {
        metrics.onLease?.(endpoint, held);
        logger.info(
          { endpoint: endpoint.name, endpointId: endpoint.id },
          held ? 'delivering webhooks for this endpoint' : 'no longer delivering for this endpoint',
        );
      },
      onError: (endpoint, error) =>
        reportError('webhook delivery step failed', { endpoint: endpoint.name }, error),
    },
  );

  const shutdown = new GracefulShutdown(logger, config.SHUTDOWN_TIMEOUT_SECONDS);
  shutdown.listen();
  shutdown.add('database pool', () => database.close());
  shutdown.add('http sender', () => sender.close());
  const ops = await startOpsServer({
    db: database.db,
    registry,
    host: config.METRICS_HOST,
    port: config.METRICS_PORT,
  });
  // Steps run in reverse: the deliverers stop (a request in flight is aborted), then the probes.
  shutdown.add('ops server', () => ops.stop());
  shutdown.add('webhook deliverers', () => fleet.stop());
  fleet.start();
  logger.info(
    {
      batchMaxEvents: config.WEBHOOKS_BATCH_MAX_EVENTS,
      batchWaitMs: config.WEBHOOKS_BATCH_WAIT_MS,
      allowPrivateTargets: config.WEBHOOKS_ALLOW_PRIVATE_TARGETS,
      metrics: `http://${config.METRICS_HOST}:${ops.port}/metrics`,
    },
    'pulse webhooks started',
  );
});

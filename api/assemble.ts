import type { Express } from 'express';
import type { Registry } from 'prom-client';
import type { ApiConfig } from '../lib/config.ts';
import type { DatabaseHandle } from '../lib/db.ts';
import type { Logger } from '../lib/logger.ts';
import { createRegistry } from '../lib/metrics.ts';
import { createAdmission, type Admission } from './admission.ts';
import { buildApp } from './app.ts';
import { createHeartbeatWriter } from './heartbeat-writer-factory.ts';
import type { HeartbeatWriter } from './heartbeat-writer.ts';
import { createApiMetrics } from './metrics.ts';
import { CoalescingStatusReader, DirectStatusReader } from './status-reader.ts';

export interface Api {
  app: Express;
  heartbeats: HeartbeatWriter;
  registry: Registry;
  admission: Admission;
}

/** Wires the API's parts together; the entry point and the tests share this. */
export function assembleApi(
  database: DatabaseHandle,
  config: Readonly<ApiConfig>,
  logger: Logger,
): Api {
  const registry = createRegistry(database.pool);
  const metrics = createApiMetrics(registry);
  const heartbeats = createHeartbeatWriter(database.db, config, metrics.flushObserver);
  metrics.watchQueue(heartbeats);
  const statuses = config.STATUS_READ_COALESCING
    ? new CoalescingStatusReader(database.db, config.ONLINE_THRESHOLD_SECONDS)
    : new DirectStatusReader(database.db, config.ONLINE_THRESHOLD_SECONDS);
  const admission = createAdmission({
    maxInFlight: config.MAX_IN_FLIGHT_REQUESTS,
    maxQueueWaitMs: config.MAX_QUEUE_WAIT_MS,
    queueWaitMs: () => Math.max(heartbeats.oldestQueuedMs(), database.poolWaitMs()),
    logger,
    onShed: (reason) => metrics.onShed(reason),
  });
  metrics.watchAdmission(admission);
  const app = buildApp({
    db: database.db,
    heartbeats,
    statuses,
    logger,
    config,
    registry,
    httpMetrics: metrics.httpMiddleware,
    admission,
  });
  return { app, heartbeats, registry, admission };
}

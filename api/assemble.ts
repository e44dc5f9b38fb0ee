import type { Express } from 'express';
import type { Registry } from 'prom-client';
import type { ApiConfig } from '../lib/config.ts';
import type { DatabaseHandle } from '../lib/db.ts';
import type { Logger } from '../lib/logger.ts';
import { createRegistry } from '../lib/metrics.ts';
import { ShardRouter } from '../lib/shard-routing.ts';
import { buildApp } from './app.ts';
import {
  DirectHeartbeatWriter,
  GroupCommitHeartbeatWriter,
  type HeartbeatWriter,
} from './heartbeat-writer.ts';
import { createApiMetrics } from './metrics.ts';
import { CoalescingStatusReader, DirectStatusReader } from './status-reader.ts';

export interface Api {
  app: Express;
  heartbeats: HeartbeatWriter;
  registry: Registry;
}

/** Wires the API's parts together; the entry point and the tests share this. */
export function assembleApi(
  database: DatabaseHandle,
  config: Readonly<ApiConfig>,
  logger: Logger,
): Api {
  const registry = createRegistry(database.pool);
  const metrics = createApiMetrics(registry);
  // One per process: caches where Citus keeps each user (nothing to do on plain PostgreSQL).
  const shardRouter = new ShardRouter(database.db);
  const heartbeats: HeartbeatWriter = config.HEARTBEAT_GROUP_COMMIT
    ? new GroupCommitHeartbeatWriter(
        database.db,
        {
          maxBatchIds: config.HEARTBEAT_FLUSH_MAX_IDS,
          maxDelayMs: config.HEARTBEAT_FLUSH_DELAY_MS,
          maxConcurrentFlushes: config.HEARTBEAT_MAX_CONCURRENT_FLUSHES,
          maxQueuedIds: config.HEARTBEAT_QUEUE_MAX_IDS,
        },
        metrics.flushObserver,
        logger,
        shardRouter,
      )
    : new DirectHeartbeatWriter(database.db, metrics.flushObserver, logger, shardRouter);
  metrics.watchQueue(heartbeats);
  const statuses = config.STATUS_READ_COALESCING
    ? new CoalescingStatusReader(
        database.db,
        config.ONLINE_THRESHOLD_SECONDS,
        undefined,
        undefined,
        shardRouter,
      )
    : new DirectStatusReader(database.db, config.ONLINE_THRESHOLD_SECONDS, shardRouter);
  const app = buildApp({
    db: database.db,
    heartbeats,
    statuses,
    logger,
    config,
    registry,
    httpMetrics: metrics.httpMiddleware,
  });
  return { app, heartbeats, registry };
}

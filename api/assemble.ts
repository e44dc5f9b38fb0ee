import type { Express } from 'express';
import type { Registry } from 'prom-client';
import type { ApiConfig } from '../lib/infra/config.ts';
import {
  DEFAULT_STATEMENT_TIMEOUT_MS,
  isDatabaseUnavailable,
  type DatabaseHandle,
} from '../lib/infra/db.ts';
import { exposedCollector, heapGrowthRelease, noHeapRelease } from './edge/heap-release.ts';
import { errorFields, type Logger } from '../lib/infra/logger.ts';
import { createRegistry } from '../lib/infra/metrics.ts';
import { ShardRouter } from '../lib/citus/shard-routing.ts';
import { createAdmission, type Admission } from './edge/admission.ts';
import { buildApp } from './app.ts';
import {
  DirectHeartbeatWriter,
  GroupCommitHeartbeatWriter,
  type HeartbeatWriter,
} from './write/heartbeat-writer.ts';
import { PollPresenceFeed } from './stream/poll-feed.ts';
import type { ChangeFeed } from './stream/change-feed.ts';
import { HeldPresence } from './stream/held-presence.ts';
import {
  DEFAULT_ONLINE_THRESHOLD_SECONDS,
  LiveOnlineThreshold,
} from '../lib/store/online-threshold.ts';
import { createApiMetrics } from './metrics.ts';
import { CallerLimits, createCallerLimitMetrics } from './edge/caller-limits.ts';
import { StreamHub } from './stream/status-stream.ts';
import { createStreamMetrics } from './stream/stream-metrics.ts';
import { CoalescingStatusReader, DirectStatusReader } from './read/status-reader.ts';
import { LiveVisibilityRule } from './read/visibility-rule.ts';
import { SettingsMissingLog } from './read/settings-missing-log.ts';
import { readPresenceSettings, SettingsMissingError } from '../lib/store/pulse-store.ts';
import { createOfflineDetection } from '../lib/presence/group-detectors.ts';
import { createDetectorMetrics } from '../lib/presence/detector-metrics.ts';
import { openChangeLog } from '../lib/store/node-change-log.ts';
import { firstNodeUrl } from '../lib/infra/database-url.ts';
import { LogPresenceFeed } from './stream/log-feed.ts';
import { DeferredOffline } from './write/deferred-offline.ts';
import type { CitusNode } from '../lib/citus/citus-node.ts';

export interface Api {
  app: Express;
  heartbeats: HeartbeatWriter;
  registry: Registry;
  admission: Admission;
  /**
   * The live streams: close() ends them all with a retry hint and stops reading the change log,
   * beating, and the offline detector (which gives its lease up).
   */
  streams: { hub: StreamHub; close(): Promise<void> };
}

export interface AssembleOptions {
  /**
   * The database's online threshold read at start (api/main.ts): held presence's beat interval and
   * the heartbeat answers' header until pulse_settings is read again (at most a second later,
   * while used). Every online judgement reads pulse_settings live. Unset: ONLINE_THRESHOLD_SECONDS
   * (checked against the database at start), else the migration's default.
   */
  onlineThresholdSeconds?: number | undefined;
  /** The kind of node DATABASE_URL names (lib/citus/citus-node.ts); plain PostgreSQL if unset. */
  citusNode?: CitusNode;
}

/** Wires the API's parts together; the entry point and the tests share this. */
export function assembleApi(
  database: DatabaseHandle,
  config: Readonly<ApiConfig>,
  logger: Logger,
  options: AssembleOptions = {},
): Api {
  const heldThresholdSeconds =
    options.onlineThresholdSeconds ??
    config.ONLINE_THRESHOLD_SECONDS ??
    DEFAULT_ONLINE_THRESHOLD_SECONDS;
  // Read by the feed and the detector; on Citus node by node, over connections of its own.
  const changeLog = openChangeLog(database, options.citusNode ?? 'plain', {
    // One node's URL: the others are found in pg_dist_node (DATABASE_URL may list several).
    connectionString: firstNodeUrl(config.DATABASE_URL),
    logger,
    statementTimeoutMs: DEFAULT_STATEMENT_TIMEOUT_MS,
  });
  const registry = createRegistry(database.connections);
  const metrics = createApiMetrics(registry);
  // One per process: caches where Citus keeps each user, and which node holds them when
  // DATABASE_URL lists several (nothing to do on plain PostgreSQL).
  const shardRouter = new ShardRouter(database.db, 'pulse', undefined, database.nodes);
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
  // Whether the operator's pulse_visible_users exists: read at most once a second, shared by
  // reads and the stream.
  const visibilityRule = new LiveVisibilityRule(database.db);
  const statuses = config.STATUS_READ_COALESCING
    ? new CoalescingStatusReader(database.db, undefined, undefined, shardRouter, visibilityRule)
    : new DirectStatusReader(database.db, shardRouter, visibilityRule);
  const heapAfterOverload = heapReleaseFor(config, logger);
  const admission = createAdmission({
    maxInFlight: config.MAX_IN_FLIGHT_REQUESTS,
    maxQueueWaitMs: config.MAX_QUEUE_WAIT_MS,
    bodyTimeoutMs: config.REQUEST_BODY_TIMEOUT_MS,
    deadlineMs: config.REQUEST_DEADLINE_MS,
    queueWaitMs: () => Math.max(heartbeats.oldestQueuedMs(), database.poolWaitMs()),
    logger,
    onShed: (reason) => metrics.onShed(reason),
    // The flood's garbage would stay until light load brings a full collection: minutes.
    onOverloadStart: () => heapAfterOverload.started(),
    onOverloadEnd: () => {
      heapAfterOverload
        .ended()
        .catch((error: unknown) =>
          logger.error({ err: errorFields(error) }, 'giving back the heap failed'),
        );
    },
  });
  metrics.watchAdmission(admission);
  const streamMetrics = createStreamMetrics(registry);
  const threshold = new LiveOnlineThreshold(
    async () => (await readPresenceSettings(database.db)).onlineThresholdSeconds,
    heldThresholdSeconds,
  );
  // A database that cannot be reached is told by its outage log (lib/infra/outage-log.ts), once and then
  // as a count: these two repeat every beat and every poll, so they log only other failures.
  const settingsMissingLog = new SettingsMissingLog(logger);
  const unlessOutage = (message: string) => (error: unknown) => {
    if (error instanceof SettingsMissingError) settingsMissingLog.refused();
    else if (!isDatabaseUnavailable(error)) {
      logger.warn({ err: errorFields(error, 0, false) }, message);
    }
  };
  const deferredOffline = new DeferredOffline(
    database.db,
    unlessOutage('deferred offline failed'),
    shardRouter,
  );
  const held = new HeldPresence(heartbeats, {
    threshold,
    chunkIds: config.HEARTBEAT_FLUSH_MAX_IDS,
    onBeatError: unlessOutage('held heartbeat not written'),
    leaving: (userId, deviceId) => deferredOffline.isLeaving(userId, deviceId),
  });
  const feedObserver = {
    ...streamMetrics.feedObserver,
    onPollError: unlessOutage('change detection failed'),
  };
  // STREAM_CHANGE_SOURCE: tail the change log (cost follows the changes), or the fallback that
  // re-reads the watched ids every interval (docs/stream.md).
  const feed: ChangeFeed =
    config.STREAM_CHANGE_SOURCE === 'log'
      ? new LogPresenceFeed(
          database.db,
          { intervalMs: config.STREAM_POLL_INTERVAL_MS, rule: visibilityRule, log: changeLog },
          feedObserver,
        )
      : new PollPresenceFeed(
          database.db,
          {
            intervalMs: config.STREAM_POLL_INTERVAL_MS,
            beforeRecovery: () => held.beatNow(),
            rule: visibilityRule,
          },
          feedObserver,
        );
  const hub = new StreamHub(
    {
      maxOpen: config.STREAM_MAX_OPEN,
      keepAliveMs: config.STREAM_KEEPALIVE_SECONDS * 1000,
      retryMs: config.STREAM_RETRY_MS,
      drainTimeoutMs: config.STREAM_DRAIN_TIMEOUT_SECONDS * 1000,
      maxBufferedBytes: config.STREAM_MAX_BUFFERED_BYTES,
      maxBufferedBytesTotal: config.STREAM_MAX_BUFFERED_BYTES_TOTAL,
    },
    streamMetrics.streamObserver,
  );
  streamMetrics.watch({ hub, feed, held });
  const callerLimitMetrics = createCallerLimitMetrics(registry);
  const callerLimits = new CallerLimits({
    maxStreams: config.STREAM_MAX_OPEN_PER_CALLER,
    readIdsPerSecond: config.READ_IDS_PER_SECOND_PER_CALLER,
    maxIdsPerRequest: config.BATCH_MAX_IDS,
    onRefused: callerLimitMetrics.onRefused,
  });
  callerLimitMetrics.watch(callerLimits);
  const app = buildApp({
    onlineThreshold: threshold,
    db: database.db,
    databaseNodes: database.nodes,
    heartbeats,
    deferredOffline,
    shardRouter,
    settingsMissingLog,
    statuses,
    logger,
    config,
    registry,
    observeRequest: metrics.observeRequest,
    admission,
    callerLimits,
    stream: { hub, feed, held, observer: streamMetrics.streamObserver },
  });
  // Offline by threshold is logged by one detector per database (per node group on Citus); this
  // process competes for it.
  const detectorMetrics = createDetectorMetrics(registry);
  const detector = config.OFFLINE_DETECTOR
    ? createOfflineDetection(
        database.db,
        changeLog,
        {
          intervalMs: config.OFFLINE_DETECTOR_INTERVAL_MS,
          leaseTtlSeconds: config.OFFLINE_DETECTOR_LEASE_TTL_SECONDS,
          router: shardRouter,
          // After an outage, this process's held users are written before anyone is expired.
          beforeRecovery: () => held.beatNow(),
        },
        {
          ...detectorMetrics.observer,
          onError: unlessOutage('offline detection failed'),
        },
      )
    : undefined;
  if (detector) {
    detectorMetrics.watch(detector);
    detector.start();
  }
  const streams = {
    hub,
    async close() {
      hub.close();
      held.close();
      // Pending offlines are applied now, each to users quiet since it was asked.
      await Promise.all([feed.close(), detector?.stop(), deferredOffline.close()]);
      await changeLog.close();
    },
  };
  return { app, heartbeats, registry, admission, streams };
}

/** Heap release after an overload episode, if configured and the runtime offers `gc` (warns if not). */
function heapReleaseFor(config: ApiConfig, logger: Logger) {
  if (!config.HEAP_RELEASE_AFTER_OVERLOAD) return noHeapRelease;
  const collect = exposedCollector();
  if (collect === undefined) {
    logger.warn(
      'the heap a flood grows is kept after it (node runs without --expose-gc): start the API with node --expose-gc, or set HEAP_RELEASE_AFTER_OVERLOAD=false',
    );
    return noHeapRelease;
  }
  return heapGrowthRelease(collect);
}

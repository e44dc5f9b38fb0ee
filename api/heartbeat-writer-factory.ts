import type { ApiConfig } from '../lib/config.ts';
import type { Executor } from '../lib/pulse-store.ts';
import type { ShardRouter } from '../lib/shard-routing.ts';
import {
  DirectHeartbeatWriter,
  GroupCommitHeartbeatWriter,
  type FlushObserver,
  type HeartbeatWriter,
} from './heartbeat-writer.ts';

export function createHeartbeatWriter(
  db: Executor,
  config: Pick<
    ApiConfig,
    | 'HEARTBEAT_GROUP_COMMIT'
    | 'HEARTBEAT_FLUSH_MAX_IDS'
    | 'HEARTBEAT_FLUSH_DELAY_MS'
    | 'HEARTBEAT_MAX_CONCURRENT_FLUSHES'
    | 'HEARTBEAT_QUEUE_MAX_IDS'
  >,
  observer: FlushObserver = {},
  shardRouter?: ShardRouter,
): HeartbeatWriter {
  if (!config.HEARTBEAT_GROUP_COMMIT) return new DirectHeartbeatWriter(db, observer, shardRouter);
  return new GroupCommitHeartbeatWriter(
    db,
    {
      maxBatchIds: config.HEARTBEAT_FLUSH_MAX_IDS,
      maxDelayMs: config.HEARTBEAT_FLUSH_DELAY_MS,
      maxConcurrentFlushes: config.HEARTBEAT_MAX_CONCURRENT_FLUSHES,
      maxQueuedIds: config.HEARTBEAT_QUEUE_MAX_IDS,
      shardRouter,
    },
    observer,
  );
}

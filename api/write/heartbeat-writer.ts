import { errorFields, type Logger } from '../../lib/infra/logger.ts';
import {
  recordHeartbeats,
  recordHeartbeatsByShard,
  type DeviceKind,
  type DeviceTags,
  type Executor,
  type PartialWrite,
} from '../../lib/store/pulse-store.ts';
import type { ShardRouter } from '../../lib/citus/shard-routing.ts';
import { HttpError } from '../edge/errors.ts';

/** Why a heartbeat was not written: answered as a 503 with its code and `Retry-After: 1`. */
export class HeartbeatRejected extends HttpError {
  constructor(
    readonly reason: 'queue_full' | 'shutting_down' | 'write_failed',
    message?: string,
  ) {
    super(reason, message, { 'Retry-After': '1' });
    this.name = 'HeartbeatRejected';
  }
}

/** Keeps the database error as the cause, so it is logged, and says "not written" to the client. */
function writeFailed(cause: unknown): HeartbeatRejected {
  const error = new HeartbeatRejected('write_failed', 'the heartbeat was not written, retry later');
  error.cause = cause;
  return error;
}

export interface HeartbeatWriter {
  /**
   * Resolves once every id is committed to the database; rejects if it was not. `held`: the beat
   * of a stream's held presence (its online transitions are logged as `held`).
   */
  record(userIds: readonly number[], options?: RecordOptions): Promise<void>;
  /**
   * Before an explicit offline of `userIds` is written: drops their heartbeats still queued (they
   * came before the offline, which wins; their requests are answered as written) and resolves once
   * no statement holding an earlier heartbeat of theirs is still running, so the offline's DELETE
   * is ordered after it and no earlier beat can bring them back. Never rejects. With `devices`
   * (parallel to `userIds`), only the beats of those devices are dropped (a device leaving).
   */
  withdraw(userIds: readonly number[], devices?: ReadonlyArray<string | null>): Promise<void>;
  /** Refuses new heartbeats, writes every queued one, waits for flushes in flight. Idempotent. */
  close(): Promise<void>;
  /** Ids waiting for a flush (for metrics and tests). */
  readonly queuedIds: number;
  /** How long the oldest heartbeat still waiting for a flush has waited, in ms (0: none waits). */
  oldestQueuedMs(): number;
}

export interface RecordOptions {
  held?: boolean;
  /** The device of each beat, parallel to the user ids; absent: none named. */
  devices?: DeviceTags | undefined;
}

export interface FlushObserver {
  /** `ids`: distinct user ids per request, summed over the requests of the statement. */
  onFlush?(info: { ids: number; requests: number; seconds: number; ok: boolean }): void;
}

type FlushInfo = Parameters<NonNullable<FlushObserver['onFlush']>>[0];

/** An observer (metrics) that throws must not fail a committed heartbeat or stall the queue. */
function notify(observer: FlushObserver, info: FlushInfo, logger: Logger | undefined): void {
  try {
    observer.onFlush?.(info);
  } catch (error) {
    logger?.error({ err: errorFields(error) }, 'heartbeat flush observer failed');
  }
}

/** Settles when every write in `writes` whose ids include one of `userIds` has settled. */
function writesOf(
  writes: ReadonlyMap<Promise<unknown>, readonly number[]>,
  userIds: readonly number[],
): Promise<void> {
  const wanted = new Set(userIds);
  const holding = [...writes].filter(([, ids]) => ids.some((id) => wanted.has(id)));
  return Promise.allSettled(holding.map(([write]) => write)).then(() => undefined);
}

/** One request's ids without repeats: `[7, 7, 7]` is one heartbeat of user 7. */
function distinct(userIds: readonly number[]): readonly number[] {
  return userIds.length > 1 ? [...new Set(userIds)] : userIds;
}

/** A request's beats without repeats of a (user, device); the last kind given wins. */
function distinctBeats(
  userIds: readonly number[],
  devices: DeviceTags | undefined,
): { userIds: readonly number[]; devices: DeviceTags | undefined } {
  if (devices === undefined) return { userIds: distinct(userIds), devices };
  if (userIds.length === 1) return { userIds, devices };
  const at = new Map<string, number>();
  const ids: number[] = [];
  const tags = { ids: [] as Array<string | null>, kinds: [] as Array<DeviceKind | null> };
  userIds.forEach((id, index) => {
    const device = devices.ids[index] ?? null;
    const kind = devices.kinds[index] ?? null;
    const key = beatKey(id, device);
    const seen = at.get(key);
    if (seen !== undefined) {
      tags.kinds[seen] = kind;
      return;
    }
    at.set(key, ids.length);
    ids.push(id);
    tags.ids.push(device);
    tags.kinds.push(kind);
  });
  return { userIds: ids, devices: tags };
}

/** One key per (user, device): null is the user's unnamed device. */
const beatKey = (userId: number, device: string | null) =>
  device === null ? String(userId) : `${userId}/${device}`;

/** One statement and one commit per request: the simple mode, kept for comparison and debugging. */
export class DirectHeartbeatWriter implements HeartbeatWriter {
  private closed = false;
  /** Each statement running, with its ids (for withdraw). */
  private readonly inFlight = new Map<Promise<unknown>, readonly number[]>();
  readonly queuedIds = 0;

  oldestQueuedMs(): number {
    return 0;
  }

  constructor(
    private readonly db: Executor,
    private readonly observer: FlushObserver = {},
    private readonly logger?: Logger,
    /** On Citus, writes go as one statement per shard (lib/citus/shard-routing.ts). */
    private readonly shardRouter?: ShardRouter,
  ) {}

  async record(requested: readonly number[], options: RecordOptions = {}): Promise<void> {
    if (this.closed) throw new HeartbeatRejected('shutting_down', 'the server is shutting down');
    const { userIds, devices } = distinctBeats(requested, options.devices);
    const started = performance.now();
    const write = recordHeartbeats(
      this.db,
      userIds,
      this.shardRouter,
      options.held ? userIds : [],
      devices,
    );
    this.inFlight.set(write, userIds);
    let ok = false;
    try {
      await write;
      ok = true;
    } catch (error) {
      throw writeFailed(error);
    } finally {
      this.inFlight.delete(write);
      notify(
        this.observer,
        { ids: userIds.length, requests: 1, seconds: (performance.now() - started) / 1000, ok },
        this.logger,
      );
    }
  }

  withdraw(userIds: readonly number[]): Promise<void> {
    return writesOf(this.inFlight, userIds);
  }

  async close(): Promise<void> {
    this.closed = true;
    await Promise.allSettled([...this.inFlight.keys()]);
  }
}

export interface GroupCommitOptions {
  /** Flush as soon as this many ids are queued. */
  maxBatchIds: number;
  /** Flush at the latest this long after the first id was queued. */
  maxDelayMs: number;
  /** Flushes (statements) running at once; more ids queue up meanwhile and go in the next one. */
  maxConcurrentFlushes: number;
  /** Above this many queued ids new heartbeats are refused (backpressure). */
  maxQueuedIds: number;
}

/**
 * The requests of one future statement. They all wait on one promise: per request, the writer only
 * appends ids (no promise, closure or record per request; docs/request-cost.md).
 */
interface Batch {
  /** The ids of its requests, each request's without repeats, in arrival order. */
  ids: number[];
  /** The device of each id (parallel to `ids`), once a request named one; else undefined. */
  devices: { ids: Array<string | null>; kinds: Array<DeviceKind | null> } | undefined;
  requests: number;
  /** When its first request arrived (performance.now()). */
  queuedAt: number;
  /** Ids queued only by held presence (a request's heartbeat of the same user wins). */
  held: Set<number> | undefined;
  /**
   * Set when the batch was opened while writes are split by shard (Citus): its flush may then
   * write some shards and fail others, and each request looks up its own ids in the failed ones.
   */
  splitByShard: boolean;
  /** Resolves with the ids not written (a partial write, splitByShard only) or undefined. */
  done: Promise<PartialWrite | undefined>;
  resolve(partial?: PartialWrite): void;
  reject(error: unknown): void;
}

function newBatch(splitByShard: boolean): Batch {
  let resolve!: (partial?: PartialWrite) => void;
  let reject!: (error: unknown) => void;
  const done = new Promise<PartialWrite | undefined>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  // Every request of the batch awaits `done`; this keeps a failed flush with no request left
  // (impossible today) from becoming an unhandled rejection.
  done.catch(() => undefined);
  return {
    ids: [],
    devices: undefined,
    requests: 0,
    queuedAt: performance.now(),
    held: undefined,
    splitByShard,
    done,
    resolve,
    reject,
  };
}

/** Rejects a request of a partially written batch when any of its ids was not written. */
function ownOutcome(
  done: Promise<PartialWrite | undefined>,
  userIds: readonly number[],
): Promise<void> {
  return done.then((partial) => {
    if (partial !== undefined && userIds.some((id) => partial.failedIds.has(id))) {
      throw writeFailed(partial.error);
    }
  });
}

/**
 * Group commit: heartbeats from many requests are written by one INSERT ... ON CONFLICT statement,
 * so PostgreSQL commits once per batch instead of once per request. A request's promise settles
 * only when the statement holding its ids has committed (or failed), so an acknowledged heartbeat
 * is durable.
 *
 * Requests are grouped into batches as they arrive: whole requests, up to maxBatchIds ids (at
 * least one request, however large); a request that does not fit starts the next batch. A batch
 * is flushed once it is full or maxDelayMs after the first queued heartbeat, at most
 * maxConcurrentFlushes at a time.
 *
 * On Citus a flush is one statement per shard, each committing on its own: a worker that is down
 * fails only the requests with an id on its shards, and the others are answered as written.
 */
export class GroupCommitHeartbeatWriter implements HeartbeatWriter {
  /** Batches waiting for a flush, oldest first; only the last one takes more requests. */
  private queue: Batch[] = [];
  private queued = 0;
  private running = 0;
  private timer: NodeJS.Timeout | undefined;
  private delayElapsed = false;
  private closed = false;
  private readonly idle = new Set<() => void>();
  /** Each batch being written (its `done`, settled either way), with its ids (for withdraw). */
  private readonly flushing = new Map<Promise<unknown>, readonly number[]>();

  constructor(
    private readonly db: Executor,
    private readonly options: GroupCommitOptions,
    private readonly observer: FlushObserver = {},
    private readonly logger?: Logger,
    /** On Citus, writes go as one statement per shard (lib/citus/shard-routing.ts). */
    private readonly shardRouter?: ShardRouter,
  ) {}

  get queuedIds(): number {
    return this.queued;
  }

  get flushesInFlight(): number {
    return this.running;
  }

  oldestQueuedMs(): number {
    const oldest = this.queue[0];
    return oldest === undefined ? 0 : performance.now() - oldest.queuedAt;
  }

  record(requested: readonly number[], options: RecordOptions = {}): Promise<void> {
    const { userIds, devices } = distinctBeats(requested, options.devices);
    if (this.closed) {
      return Promise.reject(new HeartbeatRejected('shutting_down', 'the server is shutting down'));
    }
    // Nothing to write (a gateway with no users connected): no flush would ever settle it.
    if (userIds.length === 0) return Promise.resolve();
    if (this.queued > 0 && this.queued + userIds.length > this.options.maxQueuedIds) {
      return Promise.reject(
        new HeartbeatRejected('queue_full', 'too many heartbeats are waiting to be written'),
      );
    }
    let batch = this.queue[this.queue.length - 1];
    if (
      batch === undefined ||
      (batch.ids.length > 0 && batch.ids.length + userIds.length > this.options.maxBatchIds)
    ) {
      batch = newBatch(this.shardRouter?.routesByShard === true);
      this.queue.push(batch);
    }
    if (options.held) {
      // Held beats come once per process every third of the threshold: a scan is cheap here.
      const byRequests = new Set(batch.ids.filter((id) => !batch.held?.has(id)));
      batch.held ??= new Set();
      for (const id of userIds) if (!byRequests.has(id)) batch.held.add(id);
    } else if (batch.held !== undefined) {
      for (const id of userIds) batch.held.delete(id);
    }
    if (devices !== undefined || batch.devices !== undefined) {
      batch.devices ??= { ids: batch.ids.map(() => null), kinds: batch.ids.map(() => null) };
      for (let i = 0; i < userIds.length; i += 1) {
        batch.devices.ids.push(devices?.ids[i] ?? null);
        batch.devices.kinds.push(devices?.kinds[i] ?? null);
      }
    }
    for (const id of userIds) batch.ids.push(id);
    batch.requests += 1;
    this.queued += userIds.length;
    this.schedule();
    // Plain PostgreSQL: one statement, so the batch's promise is every request's answer as is.
    return batch.splitByShard
      ? ownOutcome(batch.done, userIds)
      : (batch.done as Promise<unknown> as Promise<void>);
  }

  withdraw(userIds: readonly number[], devices?: ReadonlyArray<string | null>): Promise<void> {
    // A scan of the queue: offlines are rare next to heartbeats, and the queue is bounded.
    // Without devices the users leave on every device; with them, only those devices leave.
    const gone = new Set(userIds);
    const goneDevices =
      devices === undefined
        ? undefined
        : new Set(userIds.map((id, index) => beatKey(id, devices[index] ?? null)));
    for (const batch of [...this.queue]) {
      const leaves = (id: number, index: number) =>
        goneDevices === undefined
          ? gone.has(id)
          : goneDevices.has(beatKey(id, batch.devices?.ids[index] ?? null));
      const keep = batch.ids.map((id, index) => !leaves(id, index));
      const kept = batch.ids.filter((_, index) => keep[index]);
      if (kept.length === batch.ids.length) continue;
      this.queued -= batch.ids.length - kept.length;
      batch.ids = kept;
      if (batch.devices !== undefined) {
        batch.devices = {
          ids: batch.devices.ids.filter((_, index) => keep[index]),
          kinds: batch.devices.kinds.filter((_, index) => keep[index]),
        };
      }
      if (kept.length === 0) {
        // Nothing of it is left to write: its requests are answered now.
        this.queue.splice(this.queue.indexOf(batch), 1);
        batch.resolve();
      }
    }
    if (this.queued === 0) this.resetDelay();
    this.schedule();
    return writesOf(this.flushing, userIds);
  }

  async close(): Promise<void> {
    this.closed = true;
    this.delayElapsed = true;
    this.schedule();
    if (this.queued === 0 && this.running === 0) return;
    await new Promise<void>((resolve) => this.idle.add(resolve));
  }

  private schedule(): void {
    while (this.queued > 0 && this.running < this.options.maxConcurrentFlushes) {
      const ready = this.delayElapsed || this.queued >= this.options.maxBatchIds;
      if (!ready) break;
      this.flush(this.takeBatch());
    }
    if (this.queued > 0 && this.timer === undefined && !this.delayElapsed) {
      this.timer = setTimeout(() => {
        this.timer = undefined;
        this.delayElapsed = true;
        this.schedule();
      }, this.options.maxDelayMs);
    }
    if (this.queued === 0 && this.running === 0) {
      for (const resolve of this.idle) resolve();
      this.idle.clear();
    }
  }

  /** The oldest batch (whole requests, up to maxBatchIds ids, at least one request). */
  private takeBatch(): Batch {
    const batch = this.queue.shift()!;
    this.queued -= batch.ids.length;
    if (this.queued === 0) this.resetDelay();
    return batch;
  }

  /** Nothing queued: the next heartbeat starts a new delay. */
  private resetDelay(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.delayElapsed = false;
  }

  private flush(batch: Batch): void {
    this.running += 1;
    this.flushing.set(batch.done, batch.ids);
    const started = performance.now();
    const settle = (ok: boolean, error?: unknown, partial?: PartialWrite) => {
      this.running -= 1;
      this.flushing.delete(batch.done);
      if (ok) batch.resolve(partial);
      else batch.reject(error);
      notify(
        this.observer,
        {
          ids: batch.ids.length,
          requests: batch.requests,
          seconds: (performance.now() - started) / 1000,
          ok: ok && partial === undefined,
        },
        this.logger,
      );
      this.schedule();
    };
    const heldIds = batch.held === undefined ? [] : [...batch.held];
    recordHeartbeatsByShard(this.db, batch.ids, this.shardRouter, heldIds, batch.devices).then(
      (partial) => {
        if (partial === undefined) settle(true);
        // Its requests do not look up their ids (the shards were not known when it opened).
        else if (!batch.splitByShard) settle(false, writeFailed(partial.error));
        else settle(true, undefined, partial);
      },
      (error: unknown) => settle(false, writeFailed(error)),
    );
  }
}

/**
 * The offline detector: notices users who went offline because nobody wrote anything (their last
 * heartbeat passed the online threshold) and logs each such transition once, in the statement that
 * unmarks them (`expireDue` in lib/store/presence-log.ts).
 *
 * Cost follows the online users and the threshold, not watchers or a poll interval: the detector
 * knows every marked-online user's last known heartbeat (from one scan of `pulse` when it takes
 * over, then from the log's online events) and looks at a user again only when that heartbeat
 * would expire. A user found refreshed is rescheduled at the new last_hb + threshold, so each
 * online user costs one primary-key probe per threshold, whatever the heartbeat rate.
 *
 * One detector per database runs, under a lease (`pulse_job_leases`, job `offline-detector`);
 * any API or sweeper process may hold it. On Citus, one per node group instead, each with its
 * node's log, its node's scan and a lease of its own (group-detectors.ts). The lease saves work, correctness does not depend on it:
 * the unmarking UPDATE only matches rows still marked, so two detectors never log a transition
 * twice, and a new holder rebuilds its schedule from `pulse` itself, so nothing is missed across a
 * restart or a take-over (transitions due meanwhile are logged late, at most the lease TTL).
 */
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import type { ShardRouter } from '../citus/shard-routing.ts';
import { releaseJobLease, tryAcquireJobLease } from '../store/job-lease.ts';
import {
  changeLogOf,
  expireDue,
  readDetectorClock,
  scanMarkedOnline,
  type ChangeLogReader,
  type DetectorClock,
  type MarkedOnline,
} from '../store/presence-log.ts';
import type { Executor } from '../store/pulse-store.ts';
import { DueQueue } from './due-queue.ts';

export const OFFLINE_DETECTOR_JOB = 'offline-detector';

/** A process's name in the lease table: host:pid:random. */
export const newHolderName = (): string =>
  `${hostname()}:${process.pid}:${randomBytes(3).toString('hex')}`;

export interface OfflineDetectorOptions {
  /** Time between two ticks of the holder (bounds how late a threshold crossing is logged). */
  intervalMs: number;
  /** How long the lease lasts without renewal: a crashed holder delays detection at most this. */
  leaseTtlSeconds: number;
  /** Ids per expiry statement. */
  maxIdsPerStatement?: number;
  /** This process's name in the lease table; defaults to host:pid:random. */
  holder?: string;
  router?: ShardRouter;
  /** How the log is read: node by node on Citus (lib/store/node-change-log.ts); else through `db`. */
  log?: ChangeLogReader;
  /** The lease's name: `offline-detector`, or one per node group on Citus (group-detectors.ts). */
  job?: string;
  /** Users marked online, read on start or take-over; all of `pulse` by default. */
  scan?: () => Promise<MarkedOnline[]>;
  /**
   * Awaited before the first expiry after a failed tick (the database coming back): the API
   * writes its held users' heartbeats there.
   */
  beforeRecovery?: () => Promise<unknown>;
}

export interface DetectorTick {
  /** Whether this process held the lease during the tick. */
  leaseHeld: boolean;
  /** Users taken offline by this tick. */
  expired: number;
  /** Users looked at (due) by this tick. */
  checked: number;
  /** Expiry statements run. */
  statements: number;
}

export interface OfflineDetectorObserver {
  onTick?(tick: DetectorTick): void;
  /** The lease was taken (true) or lost or given up (false). */
  onLease?(held: boolean): void;
  /** A tick failed; the next one starts over from a fresh scan. */
  onError?(error: unknown): void;
}

export class OfflineDetector {
  readonly holder: string;
  private leaseHeld = false;
  private renewedAt = 0;
  /** Set while the schedule is valid: the log cursor it has read up to. */
  private cursor: string | undefined;
  private readonly queue = new DueQueue();
  private thresholdMs = 0;
  /** Database clock minus local clock, ms. */
  private offsetMs = 0;
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private stopped = false;
  private failed = false;
  /** No expiry before this time (ms): after an outage, held streams' beats land first. */
  private graceUntil = 0;
  private readonly maxIds: number;
  private readonly log: ChangeLogReader;
  readonly job: string;

  constructor(
    private readonly db: Executor,
    private readonly options: OfflineDetectorOptions,
    private readonly observer: OfflineDetectorObserver = {},
  ) {
    this.holder = options.holder ?? newHolderName();
    this.maxIds = options.maxIdsPerStatement ?? 1000;
    this.log = options.log ?? changeLogOf(db);
    this.job = options.job ?? OFFLINE_DETECTOR_JOB;
  }

  /** Users this detector is watching for expiry (0 unless it holds the lease). */
  get scheduled(): number {
    return this.queue.size;
  }

  get holdsLease(): boolean {
    return this.leaseHeld;
  }

  /** 1 while it holds its lease, else 0 (as GroupDetectors counts its groups'). */
  get leasesHeld(): number {
    return this.leaseHeld ? 1 : 0;
  }

  /** Ticks until stop(): every intervalMs while holding the lease, else every TTL / 3. */
  start(): void {
    this.stopped = false;
    this.schedule(0);
  }

  /**
   * Stops ticking and waits for a tick in flight. Gives the lease up unless `release` is false
   * (tests use that to play a crashed holder). Idempotent.
   */
  async stop(options: { release?: boolean } = {}): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    this.timer = undefined;
    await this.running;
    if (this.leaseHeld && options.release !== false) {
      await releaseJobLease(this.db, this.job, this.holder).catch(() => undefined);
    }
    this.drop();
  }

  /**
   * One tick, after any tick in flight (tests; the loop calls it too). Never rejects: errors go
   * to onError.
   */
  tickOnce(): Promise<DetectorTick> {
    const previous = this.running ?? Promise.resolve();
    const run = previous
      .then(() => this.tick())
      .catch((error: unknown) => {
        this.observer.onError?.(error);
        // Whatever was popped from the schedule is unknown now: start over from a fresh scan.
        this.cursor = undefined;
        this.failed = true;
        return { leaseHeld: this.leaseHeld, expired: 0, checked: 0, statements: 0 };
      });
    this.running = run.then(() => undefined);
    return run;
  }

  private schedule(delayMs: number): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      void this.tickOnce().then(() => {
        this.schedule(
          this.leaseHeld
            ? this.options.intervalMs
            : Math.max(this.options.intervalMs, (this.options.leaseTtlSeconds * 1000) / 3),
        );
      });
    }, delayMs);
    this.timer.unref();
  }

  private drop(): void {
    if (this.leaseHeld) this.observer.onLease?.(false);
    this.leaseHeld = false;
    this.cursor = undefined;
    this.queue.clear();
  }

  private observeClock(clock: DetectorClock, localBefore: number): void {
    this.offsetMs = clock.dbNow - (localBefore + Date.now()) / 2;
    const thresholdMs = clock.thresholdSeconds * 1000;
    if (thresholdMs !== this.thresholdMs) {
      this.thresholdMs = thresholdMs;
      this.queue.rebase(thresholdMs);
    }
  }

  private async tick(): Promise<DetectorTick> {
    const ttl = this.options.leaseTtlSeconds;
    if (!this.leaseHeld || Date.now() - this.renewedAt >= (ttl * 1000) / 3) {
      const at = Date.now();
      const held = await tryAcquireJobLease(this.db, this.job, this.holder, ttl);
      if (!held) {
        this.drop();
        const tick = { leaseHeld: false, expired: 0, checked: 0, statements: 0 };
        this.observer.onTick?.(tick);
        return tick;
      }
      if (!this.leaseHeld) this.observer.onLease?.(true);
      this.leaseHeld = true;
      this.renewedAt = at;
    }

    if (this.failed) {
      // Back from a failure (an outage): every held stream of every API process beats within a
      // third of the threshold, so none of them is expired for the outage itself.
      await this.options.beforeRecovery?.();
      this.graceUntil = Date.now() + this.thresholdMs / 3 + this.options.intervalMs;
      this.failed = false;
    }

    if (this.cursor === undefined) {
      // The cursor first, then the scan: an online event committed in between is in both, never
      // in neither.
      const cursor = await this.log.currentCursor();
      const before = Date.now();
      const scan = this.options.scan
        ? { ...(await readDetectorClock(this.db)), users: await this.options.scan() }
        : await scanMarkedOnline(this.db);
      this.queue.clear();
      this.observeClock(scan, before);
      for (const user of scan.users) this.queue.set(user.userId, user.lastHb);
      this.cursor = cursor;
    } else {
      const read = await this.log.readEvents(this.cursor);
      // A node not read this time (Citus) is read from where it stopped by a later tick.
      for (const failure of read.failures ?? []) this.observer.onError?.(failure);
      for (const event of read.events) {
        if (event.online && event.lastSeen) this.queue.set(event.userId, event.lastSeen.getTime());
        else if (!event.online) this.queue.delete(event.userId);
      }
      this.cursor = read.snapshot;
    }

    let expired = 0;
    let checked = 0;
    let statements = 0;
    // Users found still online go back after the loop, so none is looked at twice in one tick.
    const stillOnline: Array<{ userId: number; lastHb: number }> = [];
    const now = Date.now() + this.offsetMs;
    for (; Date.now() >= this.graceUntil;) {
      const due = this.queue.popDue(now, this.maxIds);
      if (due.length === 0) break;
      const before = Date.now();
      const result = await expireDue(this.db, due, this.options.router);
      statements += 1;
      checked += due.length;
      expired += result.expired.length;
      stillOnline.push(...result.live);
      this.observeClock(result, before);
      if (this.stopped) break;
    }
    for (const user of stillOnline) this.queue.set(user.userId, user.lastHb);
    const tick = { leaseHeld: true, expired, checked, statements };
    this.observer.onTick?.(tick);
    return tick;
  }
}

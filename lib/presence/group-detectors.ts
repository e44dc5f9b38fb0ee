/**
 * On Citus, one offline detector per node group holding shards of the change log, spread over
 * the processes that run detectors (API and sweeper processes alike).
 *
 * Each group's detector reads only its node's log (by that node's snapshots) and scans only its
 * node's shards on take-over, so the work of noticing threshold crossings grows with the nodes and
 * is shared by the processes, instead of one process reading every node.
 *
 * Who runs which group: every process renews a membership lease of its own
 * (`offline-detector-member:<holder>` in pulse_job_leases) and picks, for each group, the live
 * member with the highest hash of (group, member) (rendezvous hashing): every process computes
 * the same owner from the same rows, and a member joining or leaving moves only the groups it wins
 * or held. The owner's detector then takes the group's lease (`offline-detector:group-<n>`) as on
 * plain PostgreSQL; a process that no longer owns a group stops its detector and gives the lease
 * up. Correctness never depends on this: two detectors on one group log each transition once.
 * A group whose shards changed (a shard moved in or out) gets a fresh detector, which rescans.
 */
import { createHash } from 'node:crypto';
import {
  deleteLongExpiredLeases,
  listLiveHolders,
  releaseJobLease,
  tryAcquireJobLease,
} from '../store/job-lease.ts';
import { NodeChangeLog } from '../store/node-change-log.ts';
import type { ChangeLogReader } from '../store/presence-log.ts';
import type { Executor } from '../store/pulse-store.ts';
import type { DetectorState } from './detector-metrics.ts';
import {
  newHolderName,
  OFFLINE_DETECTOR_JOB,
  OfflineDetector,
  type OfflineDetectorObserver,
  type OfflineDetectorOptions,
} from './offline-detector.ts';

const MEMBER_PREFIX = `${OFFLINE_DETECTOR_JOB}-member:`;

/** The member that runs `group`'s detector: the highest hash of (group, member). */
export function ownerOf(group: number, members: readonly string[]): string | undefined {
  let best: { member: string; score: string } | undefined;
  for (const member of members) {
    const score = createHash('sha256').update(`${group}\n${member}`).digest('hex');
    if (best === undefined || score > best.score) best = { member, score };
  }
  return best?.member;
}

/** What a process runs to log offline by threshold: start it, stop it, watch it. */
export interface OfflineDetection extends DetectorState {
  start(): void;
  stop(options?: { release?: boolean }): Promise<void>;
}

/**
 * The detection `log` calls for: one detector per database on plain PostgreSQL, one per node
 * group on Citus (the log read node by node).
 */
export function createOfflineDetection(
  db: Executor,
  log: ChangeLogReader,
  options: OfflineDetectorOptions,
  observer: OfflineDetectorObserver = {},
): OfflineDetection {
  if (log instanceof NodeChangeLog) {
    return new GroupDetectors(
      db,
      log,
      { ...options, holder: options.holder ?? newHolderName() },
      observer,
    );
  }
  return new OfflineDetector(db, { ...options, log }, observer);
}

interface Running {
  detector: OfflineDetector;
  /** The group's shard ids when it started: a change means it must rescan. */
  shards: string;
}

export class GroupDetectors implements OfflineDetection {
  readonly holder: string;
  private readonly running = new Map<number, Running>();
  private timer: NodeJS.Timeout | undefined;
  private balancing: Promise<void> | undefined;
  private stopped = false;
  private clearedDeadMembers = false;

  constructor(
    private readonly db: Executor,
    private readonly log: NodeChangeLog,
    private readonly options: OfflineDetectorOptions & { holder: string },
    private readonly observer: OfflineDetectorObserver = {},
  ) {
    this.holder = options.holder;
  }

  /** Group leases this process holds. */
  get leasesHeld(): number {
    let held = 0;
    for (const { detector } of this.running.values()) held += detector.leasesHeld;
    return held;
  }

  /** Users this process's detectors are watching for expiry. */
  get scheduled(): number {
    let users = 0;
    for (const { detector } of this.running.values()) users += detector.scheduled;
    return users;
  }

  /** The groups whose detector runs in this process (tests, logs). */
  get groups(): number[] {
    return [...this.running.keys()].sort((a, b) => a - b);
  }

  /** Balances now and then every lease TTL / 3, until stop(). */
  start(): void {
    this.stopped = false;
    this.schedule(0);
  }

  /**
   * Stops balancing and every detector; gives the leases up unless `release` is false (tests use
   * that to play a crashed process). Idempotent.
   */
  async stop(options: { release?: boolean } = {}): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    this.timer = undefined;
    await this.balancing;
    await Promise.all([...this.running.values()].map(({ detector }) => detector.stop(options)));
    this.running.clear();
    if (options.release !== false) {
      await releaseJobLease(this.db, `${MEMBER_PREFIX}${this.holder}`, this.holder).catch(
        () => undefined,
      );
    }
  }

  /** One balancing round (tests; the loop calls it too). Never rejects: errors go to onError. */
  balanceOnce(): Promise<void> {
    const previous = this.balancing ?? Promise.resolve();
    const run = previous
      .then(() => this.balance())
      .catch((error: unknown) => this.observer.onError?.(error));
    this.balancing = run;
    return run;
  }

  private schedule(delayMs: number): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      void this.balanceOnce().then(() => this.schedule((this.options.leaseTtlSeconds * 1000) / 3));
    }, delayMs);
    this.timer.unref();
  }

  private async balance(): Promise<void> {
    const ttl = this.options.leaseTtlSeconds;
    await tryAcquireJobLease(this.db, `${MEMBER_PREFIX}${this.holder}`, this.holder, ttl);
    const [members, groups] = await Promise.all([
      listLiveHolders(this.db, MEMBER_PREFIX),
      this.log.groupsHoldingLog(),
    ]);
    if (this.stopped) return;
    for (const [group, { detector, shards }] of this.running) {
      if (groups.get(group) === shards && ownerOf(group, members) === this.holder) continue;
      this.running.delete(group);
      await detector.stop();
    }
    for (const [group, shards] of groups) {
      if (this.running.has(group) || ownerOf(group, members) !== this.holder) continue;
      const view = this.log.forGroup(group);
      const detector = new OfflineDetector(
        this.db,
        {
          ...this.options,
          job: `${OFFLINE_DETECTOR_JOB}:group-${group}`,
          log: view,
          scan: () => view.scanMarkedOnline(),
        },
        this.observer,
      );
      this.running.set(group, { detector, shards });
      detector.start();
    }
    // Dead members' rows pile up only across restarts: clearing them once per start is enough
    // (every round would write the reference table on every Citus node, every few seconds).
    if (!this.clearedDeadMembers) {
      await deleteLongExpiredLeases(this.db, MEMBER_PREFIX);
      this.clearedDeadMembers = true;
    }
  }
}

import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import cron, { type ScheduledTask } from 'node-cron';
import type { Logger } from '../lib/infra/logger.ts';
import { lastSeenCutoff, trimLastSeenBatch, type Executor } from '../lib/store/pulse-store.ts';
import {
  releaseSweepLease,
  renewSweepLease,
  tryAcquireSweepLease,
} from '../lib/store/sweep-lease.ts';
import { openSweepWalk } from './sweep-walk.ts';

/**
 * How a sweep ended: `done` (walked the whole table), `skipped` (another sweeper holds the lease),
 * `stopped` (stop() was called: the current batch finished, the rest waits for the next run),
 * `lease-lost` (this sweeper stalled past the lease TTL and another took over), `failed` (a
 * statement failed, e.g. the database restarted; the next tick tries again).
 */
export type SweepOutcome = 'done' | 'skipped' | 'stopped' | 'lease-lost' | 'failed';

/** What every sweep reports: logged by the scheduler, printed by `--once`, passed to onSweep. */
export interface SweepReport {
  outcome: SweepOutcome;
  /** Whether this sweeper held the sweep lease (false: another sweeper was sweeping). */
  leaseHeld: boolean;
  deleted: number;
  /** pulse_last_seen entries past their retention deleted after the sweep. */
  lastSeenTrimmed: number;
  batches: number;
  durationMs: number;
  /** The longest batch transaction of this sweep (lease renewal + range lookup + DELETE). */
  maxBatchMs: number;
  holder: string;
  startedAt: string;
  /** The error message when outcome is `failed`. */
  error?: string;
}

export interface SweeperOptions {
  schedule: string;
  olderThanSeconds: number;
  /** How many consecutive user ids one batch (one transaction) covers. */
  batchSize: number;
  /** How long the lease lasts without renewal (a crashed sweeper blocks others at most this long). */
  leaseTtlSeconds: number;
  /** Pause between batches, leaving the database to heartbeats (0: none). */
  batchPauseMs?: number;
  /** This sweeper's name in the lease table; defaults to host:pid:random. */
  holder?: string;
  /** Called after every sweep, including skipped and failed ones (e.g. for metrics). */
  onSweep?: (report: SweepReport) => void;
}

class LeaseLostError extends Error {}

/**
 * Deletes rows whose last heartbeat is older than the sweep age, on a cron schedule, in short
 * batch transactions; at most one of any number of Sweeper processes sweeps at a time.
 */
export class Sweeper {
  readonly holder: string;
  private task: ScheduledTask | undefined;
  private running: Promise<SweepReport> | undefined;
  private stopping = false;
  private readonly stopSignal = new AbortController();

  constructor(
    private readonly db: Executor,
    private readonly logger: Logger,
    private readonly options: SweeperOptions,
  ) {
    if (!cron.validate(options.schedule)) {
      throw new Error(
        `invalid cron expression ${JSON.stringify(options.schedule)} for the sweep schedule`,
      );
    }
    const pauseMs = options.batchPauseMs ?? 0;
    if (pauseMs * 2 >= options.leaseTtlSeconds * 1000) {
      throw new Error(
        `the batch pause (${pauseMs} ms) must be less than half of the lease time-to-live (${options.leaseTtlSeconds} s): the lease would lapse between two batches`,
      );
    }
    this.holder =
      options.holder ?? `${hostname()}:${process.pid}:${randomBytes(3).toString('hex')}`;
  }

  /**
   * One whole sweep, batch by batch, each batch its own short transaction, if this sweeper can
   * take the lease. Never rejects: a failure is reported as outcome `failed`.
   */
  sweepOnce(): Promise<SweepReport> {
    if (this.running) return this.running.then(() => this.sweepOnce());
    const run = this.sweep().finally(() => {
      if (this.running === run) this.running = undefined;
    });
    this.running = run;
    return run;
  }

  /** Schedules sweeps; a tick that comes while a sweep still runs is skipped. */
  start(): void {
    this.task = cron.schedule(this.options.schedule, () => this.tick(), { name: 'pulse-sweep' });
  }

  /** Stops scheduling, lets a running sweep finish its current batch, then resolves. Idempotent. */
  async stop(): Promise<void> {
    this.stopping = true;
    this.stopSignal.abort();
    await this.task?.stop();
    await this.running;
  }

  private async tick(): Promise<void> {
    if (this.stopping) return;
    if (this.running) {
      this.logger.info({ holder: this.holder }, 'previous sweep still running: skipping this tick');
      return;
    }
    const report = await this.sweepOnce();
    // Idle ticks (nothing expired, or another sweeper's turn) come every few seconds: debug only.
    if (report.outcome === 'skipped') {
      this.logger.debug(report, 'another sweeper holds the sweep lease: skipping this tick');
    } else if (report.outcome === 'failed') {
      this.logger.error(report, 'sweep failed; the next tick tries again');
    } else if (report.outcome === 'lease-lost') {
      this.logger.warn(report, 'sweep lease lost to another sweeper: stopped sweeping');
    } else if (report.outcome === 'done' && report.deleted === 0) {
      this.logger.debug(report, 'sweep finished');
    } else {
      this.logger.info(report, report.outcome === 'done' ? 'sweep finished' : 'sweep stopped');
    }
  }

  /** One batch transaction: renews the lease (LeaseLostError when lost), then runs `work`. */
  private async inBatch<T>(
    work: (trx: Executor) => Promise<T>,
  ): Promise<{ result: T; ms: number }> {
    const started = performance.now();
    const result = await this.db.transaction().execute(async (trx) => {
      if (!(await renewSweepLease(trx, this.holder, this.options.leaseTtlSeconds)))
        throw new LeaseLostError();
      return work(trx);
    });
    return { result, ms: performance.now() - started };
  }

  /** The pause between batches (none when stopping). */
  private async pause(): Promise<void> {
    const pauseMs = this.options.batchPauseMs ?? 0;
    if (pauseMs <= 0 || this.stopping) return;
    await sleep(pauseMs, undefined, { signal: this.stopSignal.signal }).catch(() => undefined);
  }

  private async sweep(): Promise<SweepReport> {
    const startedAt = new Date().toISOString();
    const started = performance.now();
    const { batchSize, olderThanSeconds, leaseTtlSeconds } = this.options;
    let outcome: SweepOutcome = 'done';
    let error: string | undefined;
    let leaseHeld = false;
    let deleted = 0;
    let lastSeenTrimmed = 0;
    let batches = 0;
    let maxBatchMs = 0;
    try {
      leaseHeld =
        !this.stopping && (await tryAcquireSweepLease(this.db, this.holder, leaseTtlSeconds));
      if (this.stopping) {
        outcome = 'stopped';
      } else if (!leaseHeld) {
        outcome = 'skipped';
      } else {
        const walk = await openSweepWalk(this.db, { batchSize, olderThanSeconds });
        while (!walk.finished) {
          if (this.stopping) {
            outcome = 'stopped';
            break;
          }
          const batch = await this.inBatch((trx) => walk.next(trx));
          maxBatchMs = Math.max(maxBatchMs, batch.ms);
          walk.observe(batch.ms);
          // null: that call only found the end of the table.
          if (batch.result !== null) {
            deleted += batch.result;
            batches += 1;
          }
          if (!walk.finished) await this.pause();
        }

        // Last-seen retention, oldest first, in batches of the same size under the same lease.
        if (outcome === 'done') {
          const before = await lastSeenCutoff(this.db);
          for (let more = true; more;) {
            if (this.stopping) {
              outcome = 'stopped';
              break;
            }
            const trim = await this.inBatch((trx) => trimLastSeenBatch(trx, { before, batchSize }));
            lastSeenTrimmed += trim.result.deleted;
            maxBatchMs = Math.max(maxBatchMs, trim.ms);
            more = trim.result.more;
            if (more) await this.pause();
          }
        }
      }
    } catch (caught) {
      if (caught instanceof LeaseLostError) {
        outcome = 'lease-lost';
      } else {
        outcome = 'failed';
        error = caught instanceof Error ? caught.message : String(caught);
      }
    }
    if (leaseHeld && outcome !== 'lease-lost') {
      // Best effort: when the database is down, the lease expires by itself (or this sweeper,
      // still named as holder, takes it back on its next tick).
      await releaseSweepLease(this.db, this.holder).catch(() => undefined);
    }
    const report: SweepReport = {
      outcome,
      leaseHeld,
      deleted,
      lastSeenTrimmed,
      batches,
      durationMs: Math.round(performance.now() - started),
      maxBatchMs: Math.round(maxBatchMs * 10) / 10,
      holder: this.holder,
      startedAt,
      ...(error === undefined ? {} : { error }),
    };
    try {
      this.options.onSweep?.(report);
    } catch (hookError) {
      this.logger.error({ err: hookError }, 'onSweep hook failed');
    }
    return report;
  }
}

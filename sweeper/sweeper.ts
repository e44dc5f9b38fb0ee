import cron, { type ScheduledTask } from 'node-cron';
import type { Logger } from '../lib/logger.ts';
import { sweepExpiredBatch, type Executor } from '../lib/pulse-store.ts';

export interface SweepReport {
  deleted: number;
  batches: number;
  durationMs: number;
}

export interface SweeperOptions {
  schedule: string;
  olderThanSeconds: number;
  batchSize: number;
}

/** Deletes rows whose last heartbeat is older than the sweep age, on a cron schedule. */
export class Sweeper {
  private task: ScheduledTask | undefined;
  private running: Promise<SweepReport> | undefined;
  private stopping = false;

  constructor(
    private readonly db: Executor,
    private readonly logger: Logger,
    private readonly options: SweeperOptions,
  ) {}

  /** One whole sweep, batch by batch, each batch its own short transaction. */
  async sweepOnce(): Promise<SweepReport> {
    const started = performance.now();
    let cursor: string | null = null;
    let deleted = 0;
    let batches = 0;
    do {
      const batch = await sweepExpiredBatch(this.db, {
        cursor,
        batchSize: this.options.batchSize,
        olderThanSeconds: this.options.olderThanSeconds,
      });
      cursor = batch.nextCursor;
      deleted += batch.deleted;
      batches += 1;
    } while (cursor !== null && !this.stopping);
    return { deleted, batches, durationMs: Math.round(performance.now() - started) };
  }

  start(): void {
    this.task = cron.schedule(this.options.schedule, () => this.tick(), {
      name: 'pulse-sweep',
    });
  }

  /** Stops scheduling, lets a running sweep finish its current batch, then resolves. Idempotent. */
  async stop(): Promise<void> {
    this.stopping = true;
    await this.task?.stop();
    await this.running?.catch(() => undefined);
  }

  private async tick(): Promise<void> {
    if (this.stopping) return;
    if (this.running) {
      this.logger.info('previous sweep still running: skipping this tick');
      return;
    }
    this.running = this.sweepOnce();
    try {
      const report = await this.running;
      this.logger.info(report, 'sweep finished');
    } catch (error) {
      this.logger.error({ err: error }, 'sweep failed; the next tick tries again');
    } finally {
      this.running = undefined;
    }
  }
}

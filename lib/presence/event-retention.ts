/**
 * Keeps the change log's daily partitions: creates them ahead, drops those past
 * pulse_settings.event_retention_days; and deletes the audience changes (pulse_visibility_changes)
 * older than an hour, long read by every stream. Runs at start and then every `intervalMs` (the sweeper
 * process runs it). Every step is idempotent, so two processes running it at once cost a failed
 * CREATE at worst, retried at the next run.
 */
import type { Logger } from '../infra/logger.ts';
import { errorFields } from '../infra/logger.ts';
import {
  countDefaultPartitionEvents,
  deleteOldVisibilityChanges,
  dropExpiredEventPartitions,
  ensureEventPartitions,
} from '../store/presence-log.ts';
import type { Executor } from '../store/pulse-store.ts';

export interface EventRetentionReport {
  created: string[];
  dropped: string[];
  /** Rows in the default partition: non-zero means partitions were not created in time. */
  defaultRows: number;
  /** pulse_visibility_changes rows deleted. */
  visibilityChangesDeleted: number;
}

export class EventRetention {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<unknown> | undefined;

  constructor(
    private readonly db: Executor,
    private readonly logger: Logger,
    private readonly options: { intervalMs: number; aheadDays: number },
  ) {}

  async runOnce(): Promise<EventRetentionReport> {
    const created = await ensureEventPartitions(this.db, this.options.aheadDays);
    const dropped = await dropExpiredEventPartitions(this.db);
    const defaultRows = await countDefaultPartitionEvents(this.db);
    const visibilityChangesDeleted = await deleteOldVisibilityChanges(this.db);
    return { created, dropped, defaultRows, visibilityChangesDeleted };
  }

  start(): void {
    const run = () => {
      this.running = this.runOnce()
        .then((report) => {
          if (report.defaultRows > 0) {
            this.logger.warn(
              report,
              'pulse_events_default holds rows: a daily partition was missing when they were written',
            );
          } else if (report.created.length > 0 || report.dropped.length > 0) {
            this.logger.info(report, 'change log partitions kept');
          }
        })
        .catch((error: unknown) =>
          this.logger.warn(
            { err: errorFields(error) },
            'change log partitions not kept; next run retries',
          ),
        );
    };
    run();
    this.timer = setInterval(run, this.options.intervalMs);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    await this.running;
  }
}

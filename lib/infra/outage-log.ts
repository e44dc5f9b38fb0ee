/**
 * Keeps the log readable while the database is down. Without it every failed request and every
 * lost pooled connection wrote its own line (thousands a minute, each with a stack). Instead:
 *
 *   error  "database unavailable"          once, with the first failure's message and code
 *   warn   "database still unavailable"    every summaryIntervalMs while down, with a count
 *   info   "database available again"      once, when a query succeeds again
 *
 * "Again" needs a success with no failure in the last recoveryQuietMs: while a table is locked,
 * say, some statements time out and others succeed, and the log should not flap with them.
 * failed() and succeeded() are called for every query, so both are cheap when nothing changes.
 */
import { errorFields, type Logger } from './logger.ts';

export interface OutageLogOptions {
  summaryIntervalMs?: number;
  recoveryQuietMs?: number;
}

export class OutageLog {
  private down = false;
  private downSince = 0;
  private lastFailureAt = 0;
  private failuresSinceSummary = 0;
  private failuresTotal = 0;
  private timer: NodeJS.Timeout | undefined;
  private readonly summaryIntervalMs: number;
  private readonly recoveryQuietMs: number;

  constructor(
    private readonly logger: Logger,
    options: OutageLogOptions = {},
  ) {
    this.summaryIntervalMs = options.summaryIntervalMs ?? 10_000;
    this.recoveryQuietMs = options.recoveryQuietMs ?? Math.min(1_000, this.summaryIntervalMs);
  }

  get isDown(): boolean {
    return this.down;
  }

  failed(error: unknown): void {
    this.lastFailureAt = Date.now();
    if (this.down) {
      this.failuresTotal += 1;
      this.failuresSinceSummary += 1;
      return;
    }
    this.down = true;
    this.downSince = this.lastFailureAt;
    this.failuresTotal = 1;
    this.failuresSinceSummary = 0;
    // The cause without a stack: where in the driver a connection failed says nothing useful.
    this.logger.error({ err: errorFields(error, 0, false) }, 'database unavailable');
    this.timer = setInterval(() => this.summarize(), this.summaryIntervalMs);
    this.timer.unref();
  }

  succeeded(): void {
    if (!this.down) return;
    const now = Date.now();
    if (now - this.lastFailureAt < this.recoveryQuietMs) return;
    this.stopTimer();
    this.down = false;
    this.logger.info(
      { failures: this.failuresTotal, downSeconds: (now - this.downSince) / 1000 },
      'database available again',
    );
  }

  /** Stops the summary timer (the process is closing its pool). */
  close(): void {
    this.stopTimer();
  }

  private summarize(): void {
    this.logger.warn(
      {
        failures: this.failuresSinceSummary,
        failuresTotal: this.failuresTotal,
        downSeconds: (Date.now() - this.downSince) / 1000,
      },
      'database still unavailable',
    );
    this.failuresSinceSummary = 0;
  }

  private stopTimer(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }
}

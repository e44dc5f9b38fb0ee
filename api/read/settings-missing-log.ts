/**
 * What the log says while the shared settings row (pulse_settings id = 1) is missing: reads are
 * refused for it (503 settings_missing, and stream polls fail), and an operator must learn why and
 * what to do. One line per refused read or poll would flood the log: one line at the first refusal,
 * then at most one a minute while refusals go on, each with the count since the line before.
 */
import type { Logger } from '../../lib/infra/logger.ts';
import { SettingsMissingError } from '../../lib/store/pulse-store.ts';

export class SettingsMissingLog {
  private saidAt = -Infinity;
  private refusedSinceLine = 0;

  constructor(
    private readonly logger: Logger,
    private readonly everyMs = 60_000,
  ) {}

  /** A read or poll refused for the missing row. */
  refused(): void {
    this.refusedSinceLine += 1;
    const now = performance.now();
    if (now - this.saidAt < this.everyMs) return;
    this.saidAt = now;
    this.logger.error(
      { code: 'settings_missing', refused: this.refusedSinceLine },
      `${new SettingsMissingError().message}; until then reads answer 503 settings_missing and /readyz is not ready`,
    );
    this.refusedSinceLine = 0;
  }
}

import type { Logger } from './logger.ts';

export type CleanupStep = { name: string; run: () => Promise<void> | void };

/**
 * Runs cleanup steps in reverse order of registration on the first SIGTERM or SIGINT, then exits 0.
 * A second signal, or the timeout, forces exit 1.
 */
export class GracefulShutdown {
  private readonly steps: CleanupStep[] = [];
  private stopping: Promise<void> | undefined;

  constructor(
    private readonly logger: Logger,
    private readonly timeoutSeconds: number,
  ) {}

  add(name: string, run: CleanupStep['run']): void {
    this.steps.push({ name, run });
  }

  listen(): void {
    for (const signal of ['SIGTERM', 'SIGINT'] as const) {
      process.on(signal, () => {
        if (this.stopping) {
          this.logger.warn({ signal }, 'second signal: forcing exit');
          process.exit(1);
        }
        this.logger.info({ signal }, 'shutting down');
        void this.stop().then(() => process.exit(0));
      });
    }
  }

  /** Runs every step once (later calls wait for the same run); never rejects. */
  stop(): Promise<void> {
    this.stopping ??= this.runSteps();
    return this.stopping;
  }

  private async runSteps(): Promise<void> {
    const timer = setTimeout(() => {
      this.logger.error(
        { timeoutSeconds: this.timeoutSeconds },
        'shutdown timed out: forcing exit',
      );
      process.exit(1);
    }, this.timeoutSeconds * 1000);
    timer.unref();
    for (const step of [...this.steps].reverse()) {
      try {
        await step.run();
      } catch (error) {
        this.logger.error({ err: error, step: step.name }, 'cleanup step failed');
      }
    }
    clearTimeout(timer);
  }
}

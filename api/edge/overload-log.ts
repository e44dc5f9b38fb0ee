/**
 * The log of an overload episode, the way lib/infra/outage-log.ts logs a database outage: refused
 * requests get no line each (they are counted in metrics), so the log says
 *
 *   warn  "overloaded: refusing requests with 503"                   the first refusal
 *   warn  "overloaded: refusing requests with 503 (count since ...)"  every summaryIntervalMs
 *   info  "overload over"                                             no refusal for quietMs
 *
 * `onStart` runs at its first refusal and `onEnd` when it is over (api/assemble.ts then gives back
 * the memory the flood grew: api/edge/heap-release.ts). refused() is called for every refusal, so it
 * is cheap while an episode lasts. Times are monotonic (performance.now()): a clock stepped back
 * must not keep an episode open.
 */
import { errorFields, type Logger } from '../../lib/infra/logger.ts';

export interface OverloadLogOptions {
  logger: Logger;
  /** The weight in flight now, for the log lines. */
  inFlight: () => number;
  /** How often, while refusing, the log says how many were refused (default 10 s). */
  summaryIntervalMs?: number | undefined;
  /** How long without a refusal ends an episode (default 5 s). */
  quietMs?: number;
  onStart?: (() => void) | undefined;
  onEnd?: (() => void) | undefined;
}

interface Episode {
  startedAt: number;
  lastRefusalAt: number;
  refused: number;
  refusedSinceSummary: number;
}

export class OverloadLog {
  private episode: Episode | undefined;
  private closed = false;
  private summaryTimer: NodeJS.Timeout | undefined;
  private endTimer: NodeJS.Timeout | undefined;
  private readonly summaryIntervalMs: number;
  private readonly quietMs: number;

  constructor(private readonly options: OverloadLogOptions) {
    this.summaryIntervalMs = options.summaryIntervalMs ?? 10_000;
    this.quietMs = options.quietMs ?? 5_000;
  }

  refused(reason: string, now = performance.now()): void {
    if (this.closed) return;
    const episode = this.episode;
    if (episode !== undefined) {
      episode.lastRefusalAt = now;
      episode.refused += 1;
      episode.refusedSinceSummary += 1;
      return;
    }
    this.episode = { startedAt: now, lastRefusalAt: now, refused: 1, refusedSinceSummary: 0 };
    this.options.logger.warn(
      { reason, inFlight: this.options.inFlight() },
      'overloaded: refusing requests with 503',
    );
    this.summaryTimer = setInterval(() => this.summarize(), this.summaryIntervalMs);
    this.summaryTimer.unref();
    this.scheduleEnd(this.quietMs);
    this.runHook('onStart');
  }

  /** The process is stopping: drops the episode without ending it; later refusals are not logged. */
  close(): void {
    this.closed = true;
    this.stopTimers();
    this.episode = undefined;
  }

  private stopTimers(): void {
    clearInterval(this.summaryTimer);
    clearTimeout(this.endTimer);
    this.summaryTimer = this.endTimer = undefined;
  }

  private summarize(): void {
    const episode = this.episode;
    if (episode === undefined || episode.refusedSinceSummary === 0) return;
    this.options.logger.warn(
      { refused: episode.refusedSinceSummary, inFlight: this.options.inFlight() },
      'overloaded: refusing requests with 503 (count since the last line)',
    );
    episode.refusedSinceSummary = 0;
  }

  private scheduleEnd(delayMs: number): void {
    this.endTimer = setTimeout(() => this.endIfQuiet(), delayMs);
    this.endTimer.unref();
  }

  private endIfQuiet(): void {
    const episode = this.episode;
    if (episode === undefined) return;
    const quietFor = performance.now() - episode.lastRefusalAt;
    if (quietFor < this.quietMs) {
      this.scheduleEnd(this.quietMs - quietFor);
      return;
    }
    this.stopTimers();
    this.episode = undefined;
    this.options.logger.info(
      { refused: episode.refused, seconds: (episode.lastRefusalAt - episode.startedAt) / 1000 },
      'overload over',
    );
    this.runHook('onEnd');
  }

  /** A hook that throws must not break refusing or ending an episode. */
  private runHook(hook: 'onStart' | 'onEnd'): void {
    try {
      this.options[hook]?.();
    } catch (error) {
      this.options.logger.error({ err: errorFields(error), hook }, 'overload hook failed');
    }
  }
}

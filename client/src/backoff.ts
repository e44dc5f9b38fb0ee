/**
 * Reconnect delays. After an API restart every client of it reconnects: with a fixed delay they all
 * come back in the same second. "Full jitter" (a delay drawn uniformly between 0 and an
 * exponentially growing cap) spreads them over the whole window, and a server that answers 503
 * with `Retry-After` gets at least that long, with the jitter added on top rather than instead.
 */

export interface BackoffOptions {
  /** The cap of the first retry's window, in milliseconds. */
  initialMs: number;
  /** The largest window, in milliseconds. */
  maxMs: number;
}

export const DEFAULT_BACKOFF: BackoffOptions = { initialMs: 1_000, maxMs: 30_000 };

export class Backoff {
  private failures = 0;

  constructor(
    private readonly options: BackoffOptions = DEFAULT_BACKOFF,
    private readonly random: () => number = Math.random,
  ) {}

  /** Consecutive failures so far. */
  get attempts(): number {
    return this.failures;
  }

  /**
   * The delay before the next attempt, and counts a failure. `retryAfterMs` (from `Retry-After`)
   * is a floor; `hintMs` (the stream's `retry:` field) replaces the initial window.
   */
  next(retryAfterMs?: number, hintMs?: number): number {
    const base = Math.max(hintMs ?? this.options.initialMs, 1);
    const window = Math.min(this.options.maxMs, base * 2 ** Math.min(this.failures, 30));
    this.failures += 1;
    const jitter = Math.floor(this.random() * window);
    return retryAfterMs === undefined ? jitter : retryAfterMs + jitter;
  }

  /** A connection held: the next failure starts from the initial window again. */
  reset(): void {
    this.failures = 0;
  }
}

/**
 * `Retry-After` as milliseconds from `now`: delay-seconds or an HTTP date (RFC 9110 10.2.3).
 * Undefined when absent or unreadable; never negative; at most a day.
 */
export function parseRetryAfter(value: string | null, now = Date.now()): number | undefined {
  if (value === null) return undefined;
  const text = value.trim();
  let ms: number;
  if (/^\d+$/.test(text)) {
    ms = Number(text) * 1000;
  } else {
    const date = Date.parse(text);
    if (Number.isNaN(date)) return undefined;
    ms = date - now;
  }
  return Math.min(Math.max(ms, 0), 86_400_000);
}

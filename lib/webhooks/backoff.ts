/**
 * When to try a failed batch again: exponential backoff with full jitter (a random delay between 0
 * and base * 2^attempts, capped), and never earlier than the receiver's Retry-After.
 */
export interface BackoffOptions {
  baseMs: number;
  maxMs: number;
}

/** A Retry-After longer than this is read as this (a receiver cannot park a batch for days). */
export const RETRY_AFTER_CAP_MS = 3_600_000;

/** Delay before the attempt after `failedAttempts` failures (1 for the first failure). */
export function retryDelayMs(
  failedAttempts: number,
  options: BackoffOptions,
  retryAfterMs?: number,
  random: () => number = Math.random,
): number {
  const ceiling = Math.min(options.maxMs, options.baseMs * 2 ** Math.min(failedAttempts - 1, 40));
  const jittered = Math.floor(random() * ceiling);
  return Math.max(jittered, Math.min(retryAfterMs ?? 0, RETRY_AFTER_CAP_MS));
}

/**
 * Retry-After as milliseconds from `now`: delay-seconds or an HTTP date; undefined when absent or
 * unreadable.
 */
export function parseRetryAfter(value: string | undefined, now = Date.now()): number | undefined {
  if (value === undefined) return undefined;
  const text = value.trim();
  if (/^\d+$/.test(text)) return Number(text) * 1000;
  const date = Date.parse(text);
  return Number.isNaN(date) ? undefined : Math.max(0, date - now);
}

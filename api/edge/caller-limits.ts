/**
 * Fair limits per caller (AUTH_MODE=jwt): one token may hold at most STREAM_MAX_OPEN_PER_CALLER
 * open streams of this process, and read at most READ_IDS_PER_SECOND_PER_CALLER ids a second
 * through POST /status/batch, GET /status/{id} (one id) and stream snapshots. Without these, one valid token could take every
 * stream slot (STREAM_MAX_OPEN) or the whole read budget, and admission control, which protects the
 * process rather than its callers, would refuse everyone else. Refusals are 429 with Retry-After.
 *
 * A caller is the token's `sub` (api/edge/auth.ts); with AUTH_MODE=none nobody can be told apart
 * and nothing here applies. The read budget is a token bucket holding one second of ids (at least
 * BATCH_MAX_IDS, so the largest request can pass); buckets that have refilled are dropped, so the
 * memory follows the callers active in the last seconds, not every caller ever seen.
 */
import { Counter, Gauge, type Registry } from 'prom-client';
import { HttpError } from './errors.ts';

export type CallerLimit = 'streams' | 'reads';

export interface CallerLimitsOptions {
  /** Open streams per caller; 0: no limit. */
  maxStreams: number;
  /** Ids read per second per caller; 0: no limit. */
  readIdsPerSecond: number;
  /** The largest read one request may make (BATCH_MAX_IDS): the bucket holds at least this. */
  maxIdsPerRequest: number;
  onRefused?(limit: CallerLimit): void;
}

interface Bucket {
  ids: number;
  at: number;
}

const PRUNE_EVERY_MS = 10_000;

export class CallerLimits {
  private readonly streams = new Map<string, number>();
  private readonly buckets = new Map<string, Bucket>();
  private readonly capacity: number;
  private prunedAt = performance.now();

  constructor(private readonly options: CallerLimitsOptions) {
    this.capacity = Math.max(options.readIdsPerSecond, options.maxIdsPerRequest);
  }

  /** Callers with at least one open stream. */
  get streamingCallers(): number {
    return this.streams.size;
  }

  /** Takes one of `caller`'s stream slots or throws 429; the returned function gives it back once. */
  openStream(caller: string | undefined): () => void {
    const max = this.options.maxStreams;
    if (caller === undefined || max === 0) return () => undefined;
    const open = this.streams.get(caller) ?? 0;
    if (open >= max) {
      this.options.onRefused?.('streams');
      // A slot frees when one of the caller's own streams ends: no time to promise, so a short one.
      throw new HttpError(
        'too_many_streams_per_caller',
        `this token already has ${max} streams open on this server (STREAM_MAX_OPEN_PER_CALLER): close one, or share one stream between tabs`,
        { 'Retry-After': '5' },
      );
    }
    this.streams.set(caller, open + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = (this.streams.get(caller) ?? 1) - 1;
      if (left > 0) this.streams.set(caller, left);
      else this.streams.delete(caller);
    };
  }

  /** Spends `ids` of `caller`'s read budget or throws 429 with the seconds until it has them. */
  chargeRead(caller: string | undefined, ids: number): void {
    const rate = this.options.readIdsPerSecond;
    if (caller === undefined || rate === 0 || ids === 0) return;
    const now = performance.now();
    this.prune(now);
    const bucket = this.buckets.get(caller);
    const available =
      bucket === undefined
        ? this.capacity
        : Math.min(this.capacity, bucket.ids + ((now - bucket.at) / 1000) * rate);
    if (available < ids) {
      this.options.onRefused?.('reads');
      throw new HttpError(
        'too_many_reads_per_caller',
        `this token may read ${rate} ids a second (READ_IDS_PER_SECOND_PER_CALLER): retry later`,
        { 'Retry-After': String(Math.max(1, Math.ceil((ids - available) / rate))) },
      );
    }
    this.buckets.set(caller, { ids: available - ids, at: now });
  }

  private prune(now: number): void {
    if (now - this.prunedAt < PRUNE_EVERY_MS) return;
    this.prunedAt = now;
    const rate = this.options.readIdsPerSecond;
    for (const [caller, bucket] of this.buckets) {
      if (bucket.ids + ((now - bucket.at) / 1000) * rate >= this.capacity) {
        this.buckets.delete(caller);
      }
    }
  }
}

/** pulse_caller_limit_refusals_total and pulse_stream_callers; returns the refusal hook. */
export function createCallerLimitMetrics(registry: Registry): {
  onRefused: (limit: CallerLimit) => void;
  watch: (limits: CallerLimits) => void;
} {
  const registers = [registry];
  const refused = new Counter({
    name: 'pulse_caller_limit_refusals_total',
    help: 'Requests refused with 429 by a per-caller limit, by limit (streams: STREAM_MAX_OPEN_PER_CALLER, reads: READ_IDS_PER_SECOND_PER_CALLER)',
    labelNames: ['limit'] as const,
    registers,
  });
  for (const limit of ['streams', 'reads'] as const) refused.inc({ limit }, 0);
  let read = () => 0;
  new Gauge({
    name: 'pulse_stream_callers',
    help: 'Callers (token sub) with at least one open stream on this process',
    registers,
    collect() {
      this.set(read());
    },
  });
  return {
    onRefused: (limit) => refused.inc({ limit }),
    watch(limits) {
      read = () => limits.streamingCallers;
    },
  };
}

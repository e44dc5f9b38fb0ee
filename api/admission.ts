/**
 * Admission control: admit only the work the process can finish while the answer still matters,
 * and refuse the rest at once with 503 `overloaded` and `Retry-After`, before the body is read or
 * parsed. Presence is worth something only inside its threshold (20 s): a heartbeat answered after
 * 5 s is half useless. Without this, 1,000 connections of single heartbeats saw p99 of 4-5 s and
 * RSS tripled, and a flood of refused gateway batches still paid to read and parse every 22 KB
 * body, so accepted throughput collapsed.
 *
 * Two signals, both checked in O(1) on every admitted request:
 * - requests in flight (admitted and not yet answered) against MAX_IN_FLIGHT_REQUESTS: bounds
 *   memory (bodies, promises) and, since the event loop serves them in turn, latency;
 * - queue wait against MAX_QUEUE_WAIT_MS: how long the oldest heartbeat waiting for the database
 *   has waited (group commit), or the last query waited for a pool connection while others still
 *   wait. The database, not the process, is then the limit: admitting more only lengthens the
 *   queue.
 *
 * `guard` is a middleware mounted on each route it protects, before that route's body parser. A
 * long-lived route (a Server-Sent Events stream) simply does not mount it: it is then neither
 * counted nor refused here (see docs/overload.md for its timeouts and the connection cap).
 */
import type { RequestHandler, Response } from 'express';
import type { Logger } from '../lib/logger.ts';

export type ShedReason = 'in_flight' | 'queue_wait';

export interface AdmissionOptions {
  maxInFlight: number;
  maxQueueWaitMs: number;
  /** Current queue wait in ms (heartbeat queue, pool): called only when the in-flight check passed. */
  queueWaitMs: () => number;
  logger: Logger;
  /** How often, while refusing, the log says how many were refused (default 10 s). */
  summaryIntervalMs?: number;
  onShed?: (reason: ShedReason) => void;
}

export interface Admission {
  guard: RequestHandler;
  readonly inFlight: number;
  /** Stops the summary timer. */
  close(): void;
}

const SHED_BODY = JSON.stringify({
  error: { code: 'overloaded', message: 'the server is overloaded, retry later' },
});
const SHED_HEADERS = {
  'Content-Type': 'application/json; charset=utf-8',
  'Content-Length': String(Buffer.byteLength(SHED_BODY)),
  'Retry-After': '1',
};

/** Marks a response refused here, so the access log can leave it out (it is counted instead). */
export const shedResponses = new WeakSet<object>();

export function createAdmission(options: AdmissionOptions): Admission {
  let inFlight = 0;
  let shedSinceSummary = 0;
  let timer: NodeJS.Timeout | undefined;
  const release = () => {
    inFlight -= 1;
  };
  const summarize = () => {
    if (shedSinceSummary === 0) {
      clearInterval(timer);
      timer = undefined;
      return;
    }
    options.logger.warn(
      { refused: shedSinceSummary, inFlight },
      'overloaded: refusing requests with 503 (count since the last line)',
    );
    shedSinceSummary = 0;
  };
  const shed = (res: Response, reason: ShedReason) => {
    shedResponses.add(res);
    options.onShed?.(reason);
    if (timer === undefined) {
      options.logger.warn({ reason, inFlight }, 'overloaded: refusing requests with 503');
      timer = setInterval(summarize, options.summaryIntervalMs ?? 10_000);
      timer.unref();
    } else {
      shedSinceSummary += 1;
    }
    res.writeHead(503, SHED_HEADERS).end(SHED_BODY);
  };
  return {
    guard(_req, res, next) {
      if (inFlight >= options.maxInFlight) {
        shed(res, 'in_flight');
        return;
      }
      if (options.queueWaitMs() > options.maxQueueWaitMs) {
        shed(res, 'queue_wait');
        return;
      }
      inFlight += 1;
      res.on('close', release);
      next();
    },
    get inFlight() {
      return inFlight;
    },
    close() {
      clearInterval(timer);
      timer = undefined;
    },
  };
}

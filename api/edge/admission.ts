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
 * `release` must run when each response closes: api/edge/edge.ts calls it from the one 'close'
 * listener it adds per request (a listener per request here cost CPU: docs/request-cost.md).
 */
import type { RequestHandler, Response } from 'express';
import type { Logger } from '../../lib/infra/logger.ts';
import { OverloadLog } from './overload-log.ts';
import { requestSlot } from './request-locals.ts';
import { errorBody } from '../../http/error-catalogue.ts';

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
  /** Runs at the first refusal of an overload episode (api/edge/overload-log.ts). */
  onOverloadStart?: () => void;
  /** Runs once an overload episode is over: no request refused for 5 s. */
  onOverloadEnd?: () => void;
}

export interface Admission {
  guard: RequestHandler;
  /** Gives back what `guard` admitted for this response; call once it has closed. */
  release: (res: Response) => void;
  readonly inFlight: number;
  /** Stops the log's timers and answers the refusals kept back (call before the server stops). */
  close(): void;
}

const SHED_BODY = JSON.stringify(errorBody('overloaded'));
const RETRY_AFTER_SECONDS = 1;
/** A connection that keeps ignoring Retry-After sees it double up to this. */
const MAX_RETRY_AFTER_SECONDS = 4;

const shedHeaders = (retryAfterSeconds: number) => ({
  'Content-Type': 'application/json; charset=utf-8',
  'Content-Length': String(Buffer.byteLength(SHED_BODY)),
  'Retry-After': String(retryAfterSeconds),
});

/** Marks a response refused here, so the access log can leave it out (it is counted instead). */
export const shedResponses = new WeakSet<object>();

/** The weight `guard` admitted a request with (api/edge/request-locals.ts). */
const admittedWeight = requestSlot<number>('admittedWeight');

/** A connection's last refusal: the Retry-After it was given, and when that is up. */
interface Refusal {
  retryAfterSeconds: number;
  retryAt: number;
}

/** A body of this many bytes costs about one more request: parsing, validating, its ids' work. */
const BODY_BYTES_PER_UNIT = 4096;

/**
 * What a request weighs against MAX_IN_FLIGHT_REQUESTS, known before its body is read: one, plus
 * one per started 4 KiB of announced body. A 1,000-id gateway batch or batch read (about 22 KB)
 * weighs 6; counted as 1, 128 of them in flight queued a second of database work.
 */
export function requestWeight(contentLength: string | undefined): number {
  const bytes = contentLength === undefined ? 0 : Number(contentLength);
  return Number.isFinite(bytes) && bytes > 0 ? 1 + Math.floor(bytes / BODY_BYTES_PER_UNIT) : 1;
}

export function createAdmission(options: AdmissionOptions): Admission {
  let inFlight = 0;
  const log = new OverloadLog({
    logger: options.logger,
    inFlight: () => inFlight,
    summaryIntervalMs: options.summaryIntervalMs,
    onStart: options.onOverloadStart,
    onEnd: options.onOverloadEnd,
  });
  const refusals = new WeakMap<object, Refusal>();
  /** Refusals kept back until their connection's Retry-After is up; answered at once on close(). */
  const heldBack = new Map<Response, () => void>();

  /**
   * Refuses at once, unless this connection was refused before and came back before the
   * Retry-After it was given was up. Such a client ignores Retry-After (the flood in
   * docs/overload.md); its refusal is then kept back until that time, and its next Retry-After
   * doubles. Being admitted in between does not reset it: only coming back in time does. A
   * client that honours Retry-After is always refused at once. Without this, the 872 of 1,000
   * connections that could not be admitted re-sent as fast as they were refused, and
   * accepted throughput fell to 0.18x.
   */
  const shed = (res: Response, reason: ShedReason) => {
    const now = Date.now();
    shedResponses.add(res);
    options.onShed?.(reason);
    log.refused(reason);
    const connection = res.socket ?? res;
    const last = refusals.get(connection);
    const ignoredRetryAfter = last !== undefined && now < last.retryAt;
    const retryAfterSeconds = ignoredRetryAfter
      ? Math.min(last.retryAfterSeconds * 2, MAX_RETRY_AFTER_SECONDS)
      : RETRY_AFTER_SECONDS;
    const answer = () => {
      heldBack.delete(res);
      refusals.set(connection, {
        retryAfterSeconds,
        retryAt: Date.now() + retryAfterSeconds * 1000,
      });
      if (!res.destroyed) res.writeHead(503, shedHeaders(retryAfterSeconds)).end(SHED_BODY);
    };
    if (!ignoredRetryAfter) {
      answer();
      return;
    }
    // Read and drop the body now, as Node would once the answer is sent: kept unread for the
    // seconds the refusal waits, 1,000 connections' bodies (22 KB each for a gateway batch) were
    // promoted to the old generation and outlived the flood (docs/overload.md, memory).
    res.req.resume();
    const wait = setTimeout(answer, last.retryAt - now);
    heldBack.set(res, () => {
      clearTimeout(wait);
      answer();
    });
    res.once('close', () => {
      clearTimeout(wait);
      heldBack.delete(res);
    });
  };
  return {
    guard(req, res, next) {
      const weight = requestWeight(req.headers['content-length']);
      // An empty house admits anything, so one request heavier than the limit is still served.
      if (inFlight > 0 && inFlight + weight > options.maxInFlight) {
        shed(res, 'in_flight');
        return;
      }
      if (options.queueWaitMs() > options.maxQueueWaitMs) {
        shed(res, 'queue_wait');
        return;
      }
      inFlight += weight;
      // Summed: a request that passes two guarded routes is released once, for both.
      admittedWeight.set(res, (admittedWeight.get(res) ?? 0) + weight);
      next();
    },
    release(res) {
      const weight = admittedWeight.get(res);
      if (weight === undefined) return;
      admittedWeight.set(res, undefined);
      inFlight -= weight;
    },
    get inFlight() {
      return inFlight;
    },
    close() {
      log.close();
      for (const answerNow of [...heldBack.values()]) answerNow();
    },
  };
}

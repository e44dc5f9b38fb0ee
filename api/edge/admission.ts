/**
 * Admission control: admit only the work the process can finish while the answer still matters,
 * and refuse the rest at once with 503 `overloaded` and `Retry-After`, before the body is read or
 * parsed. Presence is worth something only inside its threshold (20 s): a heartbeat answered after
 * 5 s is half useless. Without this, 1,000 connections of single heartbeats saw p99 of 4-5 s and
 * RSS tripled, and a flood of refused gateway batches still paid to read and parse every 22 KB
 * body, so accepted throughput collapsed.
 *
 * Two signals, both checked in O(1) on every request:
 * - weight in flight (admitted and not yet answered) against MAX_IN_FLIGHT_REQUESTS: bounds
 *   memory (bodies, promises) and, since the event loop serves them in turn, latency;
 * - queue wait against MAX_QUEUE_WAIT_MS: how long the oldest heartbeat waiting for the database
 *   has waited (group commit), or the last query waited for a pool connection while others still
 *   wait. The database, not the process, is then the limit: admitting more only lengthens the
 *   queue.
 *
 * Only what has arrived is weighed, so bytes a client merely announces cannot hold the house (8
 * connections announcing 60 KB and sending a byte a second did, when the announced length
 * counted): a request is admitted with weight 1 on its headers, and its body adds one per started
 * 4 KiB once it has been read (`bodyRead`, the body parser's verify hook), before it is parsed;
 * if the house is then full it is refused there. A body must arrive within REQUEST_BODY_TIMEOUT_MS
 * of admission (408 `body_timeout`, connection closed), and an admitted request that has no answer
 * REQUEST_DEADLINE_MS after admission gives up (503 `deadline_exceeded`, `withinDeadline`). A
 * quarter of the house is kept for requests announcing at most 4 KiB of body (single heartbeats,
 * reads): larger or chunked ones are admitted only while three quarters are free of others.
 *
 * `guard` is a middleware mounted on each route it protects, before that route's body parser. A
 * long-lived route (the stream) calls `admit` itself for the part that is work (its snapshot) and
 * `release` once that is done. `release` must run when each response closes: api/edge/edge.ts calls it
 * from the one 'close' listener it adds per request (a listener per request here cost CPU:
 * docs/request-cost.md). One timer, running only while a request is timed, enforces both limits.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { RequestHandler, Response } from 'express';
import type { Logger } from '../../lib/infra/logger.ts';
import { HttpError } from './errors.ts';
import { OverloadLog } from './overload-log.ts';
import { requestSlot } from './request-locals.ts';
import { errorBody } from '../../http/error-catalogue.ts';

export type ShedReason = 'in_flight' | 'queue_wait' | 'body_timeout' | 'deadline_exceeded';

export interface AdmissionOptions {
  maxInFlight: number;
  maxQueueWaitMs: number;
  /** Current queue wait in ms (heartbeat queue, pool): called only when the in-flight check passed. */
  queueWaitMs: () => number;
  logger: Logger;
  /** Longest a body may take to arrive once its request is admitted (default 2 s). */
  bodyTimeoutMs?: number;
  /** Longest an admitted request may wait for its answer (default 5 s). */
  deadlineMs?: number;
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
  /**
   * The body parser's `verify` hook: weighs the body just read (bytes, not the announced length)
   * and throws 503 `overloaded` if the house has no room for it, before it is parsed.
   */
  bodyRead: (req: IncomingMessage, res: ServerResponse, body: Buffer) => void;
  /**
   * Admits work that no `guard` stands before (a stream's snapshot), weighing `weight`. Refused:
   * answers 503 `overloaded` itself and returns false.
   */
  admit: (res: Response, weight: number) => boolean;
  /** `work`, or 503 `deadline_exceeded` once this request has waited REQUEST_DEADLINE_MS. */
  withinDeadline: <T>(res: Response, work: Promise<T>) => Promise<T>;
  /** Gives back what `guard` or `admit` admitted for this response (idempotent). */
  release: (res: Response) => void;
  /** Counts and logs a refusal made elsewhere (too_many_streams) in the overload episode. */
  refusedElsewhere: (res: Response, reason: string) => void;
  readonly inFlight: number;
  /** Stops the timers and answers the refusals kept back (call before the server stops). */
  close(): void;
}

const SHED_BODY = JSON.stringify(errorBody('overloaded'));
const BODY_TIMEOUT_BODY = JSON.stringify(errorBody('body_timeout'));
// Written on the socket as Node writes its own 408: the body parser is still reading, and an
// answer through the response would meet its abort error after the headers were sent.
const BODY_TIMEOUT_RESPONSE =
  'HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json; charset=utf-8\r\n' +
  `Content-Length: ${Buffer.byteLength(BODY_TIMEOUT_BODY)}\r\nConnection: close\r\n\r\n${BODY_TIMEOUT_BODY}`;
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

/** What `guard` or `admit` admitted a request with (api/edge/request-locals.ts). */
interface Admitted {
  weight: number;
  /** performance.now() at admission: the body timeout and the deadline count from here. */
  at: number;
}
const admittedSlot = requestSlot<Admitted>('admitted');

/** A connection's last refusal: the Retry-After it was given, and when that is up. */
interface Refusal {
  retryAfterSeconds: number;
  retryAt: number;
}

/** A body of this many bytes costs about one more request: parsing, validating, its ids' work. */
export const BODY_BYTES_PER_UNIT = 4096;

/**
 * What a body weighs beyond its request's 1, once read: one per started 4 KiB. A 1,000-id gateway
 * batch or batch read (about 22 KB) weighs 6 in all; counted as 1, 128 of them in flight queued a
 * second of database work.
 */
export function bodyWeight(bytes: number): number {
  return Math.floor(bytes / BODY_BYTES_PER_UNIT);
}

/** What reading `ids` users weighs, as a batch read of them would: 1, plus 1 per 200 ids. */
export function readWeight(ids: number): number {
  return 1 + Math.floor(ids / 200);
}

/** A request announcing more than this (or a chunked body) may not use the reserved quarter. */
const SMALL_BODY_BYTES = BODY_BYTES_PER_UNIT;

function isSmall(req: IncomingMessage): boolean {
  if (req.headers['transfer-encoding'] !== undefined) return false;
  const length = req.headers['content-length'];
  return length === undefined || Number(length) <= SMALL_BODY_BYTES;
}

function hasBody(req: IncomingMessage): boolean {
  const length = req.headers['content-length'];
  return req.headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0');
}

const deadlineExceeded = () =>
  new HttpError('deadline_exceeded', 'the request could not be answered in time, retry later', {
    'Retry-After': String(RETRY_AFTER_SECONDS),
  });

interface DeadlineWaiter {
  at: number;
  reject(error: HttpError): void;
}

export function createAdmission(options: AdmissionOptions): Admission {
  const bodyTimeoutMs = options.bodyTimeoutMs ?? 2_000;
  const deadlineMs = options.deadlineMs ?? 5_000;
  const reserved = Math.floor(options.maxInFlight / 4);
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
  /** Admitted requests whose body has not been read yet, with their admission time. */
  const receiving = new Map<ServerResponse, number>();
  const waiting = new Set<DeadlineWaiter>();
  let timer: NodeJS.Timeout | undefined;

  const sweep = () => {
    const now = performance.now();
    for (const [res, at] of receiving) {
      if (now - at < bodyTimeoutMs) continue;
      receiving.delete(res);
      const req = res.req;
      if (req.complete || res.headersSent) continue;
      shedResponses.add(res);
      options.onShed?.('body_timeout');
      const socket = req.socket;
      if (!socket.destroyed) {
        // end(), not destroy(): a socket destroyed with unread bytes resets the connection, and the
        // client may lose the answer. A client that does not close in a second is cut.
        socket.end(BODY_TIMEOUT_RESPONSE);
        setTimeout(() => socket.destroy(), 1_000).unref();
      }
    }
    for (const waiter of waiting) {
      if (now - waiter.at < deadlineMs) continue;
      waiting.delete(waiter);
      options.onShed?.('deadline_exceeded');
      waiter.reject(deadlineExceeded());
    }
    if (receiving.size === 0 && waiting.size === 0) {
      clearInterval(timer);
      timer = undefined;
    }
  };
  const startTimer = () => {
    if (timer !== undefined) return;
    timer = setInterval(sweep, Math.max(10, Math.min(100, bodyTimeoutMs / 4, deadlineMs / 4)));
    timer.unref();
  };

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

  /** Why the house cannot take `weight` more now (undefined: it can). */
  const noRoom = (weight: number, limit: number): ShedReason | undefined => {
    // An empty house admits anything, so one request heavier than the limit is still served.
    if (inFlight > 0 && inFlight + weight > limit) return 'in_flight';
    if (options.queueWaitMs() > options.maxQueueWaitMs) return 'queue_wait';
    return undefined;
  };

  const take = (res: ServerResponse, weight: number, at: number) => {
    inFlight += weight;
    // Summed: a request that passes two guarded routes is released once, for both.
    const admitted = admittedSlot.get(res);
    if (admitted === undefined) admittedSlot.set(res, { weight, at });
    else admitted.weight += weight;
  };

  return {
    guard(req, res, next) {
      const limit = isSmall(req) ? options.maxInFlight : options.maxInFlight - reserved;
      const refused = noRoom(1, limit);
      if (refused !== undefined) {
        shed(res, refused);
        return;
      }
      const now = performance.now();
      take(res, 1, now);
      if (hasBody(req) && !req.complete) {
        receiving.set(res, now);
        startTimer();
      }
      next();
    },
    bodyRead(_req, res, body) {
      receiving.delete(res);
      const admitted = admittedSlot.get(res);
      const weight = bodyWeight(body.length);
      if (admitted === undefined || weight === 0) return;
      // Others in flight and no room: refused before parsing (the bytes were read already).
      if (inFlight > admitted.weight && inFlight + weight > options.maxInFlight) {
        shedResponses.add(res);
        options.onShed?.('in_flight');
        log.refused('in_flight');
        throw new HttpError('overloaded', 'the server is overloaded, retry later', {
          'Retry-After': String(RETRY_AFTER_SECONDS),
        });
      }
      inFlight += weight;
      admitted.weight += weight;
    },
    admit(res, weight) {
      const refused = noRoom(weight, options.maxInFlight);
      if (refused !== undefined) {
        shed(res, refused);
        return false;
      }
      take(res, weight, performance.now());
      return true;
    },
    withinDeadline<T>(res: Response, work: Promise<T>): Promise<T> {
      const admitted = admittedSlot.get(res);
      if (admitted === undefined) return work;
      return new Promise<T>((resolve, reject) => {
        const waiter: DeadlineWaiter = { at: admitted.at, reject };
        waiting.add(waiter);
        startTimer();
        work.then(
          (value) => {
            waiting.delete(waiter);
            resolve(value);
          },
          (error: unknown) => {
            waiting.delete(waiter);
            // eslint-disable-next-line @typescript-eslint/prefer-promise-reject-errors -- passed on as it came
            reject(error);
          },
        );
      });
    },
    release(res) {
      const admitted = admittedSlot.get(res);
      if (admitted === undefined) return;
      admittedSlot.set(res, undefined);
      receiving.delete(res);
      inFlight -= admitted.weight;
    },
    refusedElsewhere(res, reason) {
      shedResponses.add(res);
      log.refused(reason);
    },
    get inFlight() {
      return inFlight;
    },
    close() {
      log.close();
      clearInterval(timer);
      timer = undefined;
      for (const answerNow of [...heldBack.values()]) answerNow();
    },
  };
}

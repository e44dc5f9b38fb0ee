/**
 * GET /status/stream: Server-Sent Events that push the online/offline changes of watched users and,
 * when asked with hold=true, keep the caller online while open. Change delivery lives in
 * api/stream/log-feed.ts (or poll-feed.ts), held presence
 * in api/stream/held-presence.ts; this file is the HTTP side only.
 *
 * The SSE framing is written here rather than with better-sse: it is a few lines, and Pulse needs
 * what a session library does per session done once per process instead (one keep-alive timer for
 * 10,000 streams, not 10,000 timers; all the changes of one poll in one socket write), plus an
 * explicit slow-consumer rule that bounds the memory a stalled client can pin.
 *
 * Lifecycle of a stream: validation -> admission control for its snapshot (503 overloaded, weighed
 * as a batch read of its ids) -> STREAM_MAX_OPEN (503 too_many_streams) -> first held heartbeat ->
 * snapshot, within REQUEST_DEADLINE_MS (503 deadline_exceeded); any failure so far is the usual
 * JSON error. Once the snapshot is written, the stream no longer counts as a request in flight.
 * HEAD answers the headers only: it holds no one and reads nothing. Then `200
 * text/event-stream`: `retry:`, `event: snapshot`, then `event: change` per transition and a
 * keep-alive comment every STREAM_KEEPALIVE_SECONDS. It ends when the client goes, when it stops
 * reading (slow consumer), when its token expires, or on shutdown (with a fresh `retry:` hint).
 *
 * Memory: a stream whose client stops reading is cut once STREAM_MAX_BUFFERED_BYTES wait for it,
 * or as soon as the streams of the process together have STREAM_MAX_BUFFERED_BYTES_TOTAL waiting
 * (counted per stream from its last write that Node could not pass on at once, given back when it
 * drains or closes), or after STREAM_DRAIN_TIMEOUT_SECONDS without draining.
 */
import type { Request, RequestHandler, Response } from 'express';
import type { ChangeFeed } from './change-feed.ts';
import type { UserStatus } from '../../lib/store/pulse-store.ts';
import { assertMayWrite, principalOf, type Principal } from '../edge/auth.ts';
import { HttpError } from '../edge/errors.ts';
import { readWeight, type Admission } from '../edge/admission.ts';
import type { HeldPresence } from './held-presence.ts';
import type { CallerLimits } from '../edge/caller-limits.ts';
import {
  parseDeviceParams,
  parseHoldParam,
  parseOptionalUserIdParam,
  parseWatchParam,
} from '../edge/validation.ts';

export type StreamCloseReason =
  'client_closed' | 'slow_consumer' | 'token_expired' | 'shutting_down';

export interface StreamObserver {
  onEvent?(event: 'snapshot' | 'change', count: number): void;
  onClose?(reason: StreamCloseReason): void;
  onRejected?(code: 'too_many_streams' | 'shutting_down'): void;
}

export interface StreamHubOptions {
  maxOpen: number;
  keepAliveMs: number;
  retryMs: number;
  drainTimeoutMs: number;
  maxBufferedBytes: number;
  /** What all streams of the process may have waiting together (default: no limit). */
  maxBufferedBytesTotal?: number;
}

/** Bytes waiting in the process for streams that are not keeping up, summed over the streams. */
class BufferBudget {
  used = 0;
  constructor(readonly limit: number) {}
}

const STREAM_HEADERS = {
  'Content-Type': 'text/event-stream; charset=utf-8',
  // Never cached, never compressed or buffered by a proxy (nginx honours X-Accel-Buffering).
  'Cache-Control': 'no-store, no-transform',
  'X-Accel-Buffering': 'no',
};

/** The reconnection hint, spread +-50% so a restart does not bring every client back at once. */
const jitteredRetry = (retryMs: number) => Math.round(retryMs * (0.5 + Math.random()));

/**
 * The text of a `change` event. One poll hands the same row object to every stream that watches
 * that user (50 streams a row at 10,000 streams x 100 of 20,000 ids), so each row is serialized
 * once per poll, not once per stream: that was most of the garbage, and of the memory peak, a poll
 * made. Entries go with their rows.
 */
const changeEventTexts = new WeakMap<UserStatus, string>();
function changeEventText(row: UserStatus): string {
  let text = changeEventTexts.get(row);
  if (text === undefined) {
    text = `event: change\ndata: ${JSON.stringify(row)}\n\n`;
    changeEventTexts.set(row, text);
  }
  return text;
}

/** One open event stream on one response. */
class SseSession {
  private drainTimer: NodeJS.Timeout | undefined;
  private expiryTimer: NodeJS.Timeout | undefined;
  private ended = false;
  /** What this stream counts in the budget: its buffer when a write last found it full, else 0. */
  private counted = 0;
  closeReason: StreamCloseReason = 'client_closed';

  constructor(
    private readonly res: Response,
    private readonly options: StreamHubOptions,
    private readonly budget: BufferBudget,
  ) {}

  /** Writes raw SSE text; a client that does not keep up is disconnected. */
  write(text: string): void {
    if (this.ended) return;
    // Judged on what is still waiting from earlier writes, so one large snapshot is fine.
    const waiting = this.res.writableLength;
    // Past the high-water mark the stream is not keeping up and this write would count: cut it if
    // the process's budget cannot take it. Nothing waiting: one large snapshot is fine.
    const wouldCount = waiting > 0 && waiting + text.length > this.res.writableHighWaterMark;
    if (
      waiting > this.options.maxBufferedBytes ||
      (wouldCount && this.budget.used - this.counted + waiting + text.length > this.budget.limit)
    ) {
      this.destroy('slow_consumer');
      return;
    }
    const accepted = this.res.write(text);
    // Below the socket's high-water mark a stream is keeping up: only a full buffer is counted.
    this.count(accepted ? 0 : this.res.writableLength);
    if (!accepted && this.drainTimer === undefined) {
      this.drainTimer = setTimeout(
        () => this.destroy('slow_consumer'),
        this.options.drainTimeoutMs,
      );
      this.res.once('drain', () => {
        clearTimeout(this.drainTimer);
        this.drainTimer = undefined;
        this.count(0);
      });
    }
  }

  private count(bytes: number): void {
    this.budget.used += bytes - this.counted;
    this.counted = bytes;
  }

  snapshot(rows: readonly UserStatus[]): void {
    this.write(`event: snapshot\ndata: ${JSON.stringify(rows)}\n\n`);
  }

  changes(rows: readonly UserStatus[]): void {
    let text = '';
    for (const row of rows) text += changeEventText(row);
    this.write(text);
  }

  endAt(expiresAt: number | undefined): void {
    if (expiresAt === undefined) return;
    // setTimeout overflows past 2^31 - 1 ms (24.8 days); such a token outlives any process.
    const delay = Math.min(Math.max(0, expiresAt - Date.now()), 2 ** 31 - 1);
    this.expiryTimer = setTimeout(() => this.end('token_expired'), delay);
  }

  /** Ends the stream with a retry hint, so the client reconnects (to this or another replica). */
  end(reason: StreamCloseReason): void {
    if (this.ended) return;
    this.closeReason = reason;
    this.write(`retry: ${jitteredRetry(this.options.retryMs)}\n\n`);
    this.ended = true;
    this.res.end();
  }

  private destroy(reason: StreamCloseReason): void {
    if (this.ended) return;
    this.closeReason = reason;
    this.ended = true;
    this.res.destroy();
  }

  /** Timers off and its bytes out of the budget; called once the response has closed. */
  dispose(): void {
    this.count(0);
    this.ended = true;
    clearTimeout(this.drainTimer);
    clearTimeout(this.expiryTimer);
  }
}

/** The streams of one process: admission, keep-alives, shutdown. */
export class StreamHub {
  private readonly sessions = new Set<SseSession>();
  private admitted = 0;
  private keepAlive: NodeJS.Timeout | undefined;
  private closing = false;
  private readonly budget: BufferBudget;

  constructor(
    readonly options: StreamHubOptions,
    private readonly observer: StreamObserver = {},
  ) {
    this.budget = new BufferBudget(options.maxBufferedBytesTotal ?? Infinity);
  }

  /** Bytes waiting in the process for streams that are not keeping up (STREAM_MAX_BUFFERED_BYTES_TOTAL). */
  get bufferedBytes(): number {
    return this.budget.used;
  }

  /** Streams admitted and not yet closed (including those still reading their snapshot). */
  get open(): number {
    return this.admitted;
  }

  /** Takes a slot or throws 503; the returned function gives it back (idempotent). */
  admit(): () => void {
    if (this.closing) {
      this.observer.onRejected?.('shutting_down');
      throw new HttpError('shutting_down', 'the server is shutting down', {
        'Retry-After': String(Math.ceil(jitteredRetry(this.options.retryMs) / 1000)),
      });
    }
    if (this.admitted >= this.options.maxOpen) {
      this.observer.onRejected?.('too_many_streams');
      throw new HttpError(
        'too_many_streams',
        'this server holds as many streams as it may, retry later',
        { 'Retry-After': String(Math.ceil(jitteredRetry(this.options.retryMs) / 1000)) },
      );
    }
    this.admitted += 1;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.admitted -= 1;
    };
  }

  /** Starts the event stream on `res` (status, headers, retry hint). */
  start(res: Response): SseSession {
    res.status(200).set(STREAM_HEADERS);
    res.flushHeaders();
    const session = new SseSession(res, this.options, this.budget);
    session.write(`retry: ${jitteredRetry(this.options.retryMs)}\n\n`);
    this.sessions.add(session);
    this.keepAlive ??= setInterval(() => {
      for (const s of this.sessions) s.write(': keep-alive\n\n');
    }, this.options.keepAliveMs);
    this.keepAlive.unref();
    // Admitted before a shutdown began, started after: it ends at once, with its retry hint.
    if (this.closing) session.end('shutting_down');
    return session;
  }

  finish(session: SseSession): void {
    session.dispose();
    if (!this.sessions.delete(session)) return;
    this.observer.onClose?.(session.closeReason);
    if (this.sessions.size === 0) {
      clearInterval(this.keepAlive);
      this.keepAlive = undefined;
    }
  }

  /** Refuses new streams and ends every open one with a retry hint. Idempotent. */
  close(): void {
    this.closing = true;
    for (const session of this.sessions) session.end('shutting_down');
  }
}

export interface StreamRouteDeps {
  hub: StreamHub;
  feed: ChangeFeed;
  held: HeldPresence;
  admission: Pick<Admission, 'admit' | 'withinDeadline' | 'release' | 'refusedElsewhere'>;
  observer?: StreamObserver;
  config: { BATCH_MAX_IDS: number };
  /** STREAM_MAX_OPEN_PER_CALLER and the read budget of the snapshot (429); absent: none. */
  callerLimits?: CallerLimits | undefined;
}

/**
 * Whose presence the stream holds: nobody unless asked with hold=true, then `user_id` if given
 * (and allowed), else the token's `sub`. A caller that asks for what cannot be done is told (400),
 * rather than left with a stream that silently holds nothing.
 */
function holderOf(principal: Principal, req: Request): number | undefined {
  const query = req.query as Record<string, unknown>;
  const hold = parseHoldParam(query.hold);
  const requested = parseOptionalUserIdParam(query.user_id);
  if (!hold) {
    if (query.device_id !== undefined || query.device_kind !== undefined) {
      throw new HttpError(
        'invalid_request',
        'device_id and device_kind name the device whose presence the stream holds: add hold=true',
      );
    }
    if (requested === undefined) return undefined;
    throw new HttpError(
      'invalid_request',
      'user_id names whose presence the stream holds: add hold=true, or leave user_id out to only watch',
    );
  }
  if (requested === undefined) {
    if (principal.userId !== undefined) return principal.userId;
    throw new HttpError(
      'invalid_request',
      'hold=true needs a user to hold: user_id, or a token whose sub is a user id',
    );
  }
  assertMayWrite(principal, [requested]);
  return requested;
}

export function createStreamRoute({
  hub,
  feed,
  held,
  admission,
  observer = {},
  config,
  callerLimits,
}: StreamRouteDeps): RequestHandler {
  return async (req, res) => {
    const watch = parseWatchParam(
      (req.query as Record<string, unknown>).watch,
      config.BATCH_MAX_IDS,
    );
    const principal = principalOf(req);
    const holder = holderOf(principal, req);
    const device = parseDeviceParams(req.query);
    // Express routes HEAD to GET handlers: answer the headers a stream would get, and do nothing.
    if (req.method === 'HEAD') {
      res.status(200).set(STREAM_HEADERS).end();
      return;
    }
    // Per caller first: a token at its own limit must not take a slot of the process meanwhile.
    const releaseCaller = callerLimits?.openStream(principal.caller) ?? (() => undefined);
    let release: () => void;
    try {
      callerLimits?.chargeRead(principal.caller, watch.length);
      // The snapshot is a read like POST /status/batch of the same ids, and weighs as much.
      if (!admission.admit(res, readWeight(watch.length))) return releaseCaller();
      release = hub.admit();
    } catch (error) {
      releaseCaller();
      // Counted and summarized with the other refusals, not one log line each.
      if (error instanceof HttpError && error.code === 'too_many_streams') {
        admission.refusedElsewhere(res, error.code);
      }
      throw error;
    }
    // Whatever server-wide timeouts exist, a stream is meant to stay open.
    req.socket.setTimeout(0);
    req.socket.setNoDelay(true);

    /** `work` within the request deadline; what it yields after giving up is undone by `undo`. */
    const inTime = async <T>(work: Promise<T>, undo: (late: T) => void): Promise<T> => {
      try {
        return await admission.withinDeadline(res, work);
      } catch (error) {
        work.then(undo, () => undefined);
        throw error;
      }
    };

    let gone = false;
    const cleanups: Array<() => void> = [releaseCaller, release];
    const cleanUp = () => {
      for (const step of cleanups.splice(0).reverse()) step();
    };
    res.once('close', () => {
      gone = true;
      cleanUp();
    });

    let session: SseSession | undefined;
    try {
      if (holder !== undefined) {
        const holding = held.hold(holder, {
          id: device.deviceId ?? null,
          kind: device.kind ?? null,
        });
        cleanups.push(await inTime(holding, (releaseHold) => releaseHold()));
      }
      if (gone) return cleanUp();
      // Only `close` is kept for the stream's lifetime: the snapshot is not held in memory.
      // As the caller may see them: the operator's visibility rule is per viewer.
      const subscribing = feed.subscribe(
        watch,
        (changes: readonly UserStatus[]) => {
          session?.changes(changes);
          observer.onEvent?.('change', changes.length);
        },
        principal.userId ?? null,
      );
      const { snapshot, close } = await inTime(subscribing, (late) => late.close());
      cleanups.push(close);
      if (gone) return cleanUp();
      session = hub.start(res);
      const started = session;
      cleanups.push(() => hub.finish(started));
      session.snapshot(snapshot);
      admission.release(res);
      observer.onEvent?.('snapshot', 1);
      session.endAt(principal.expiresAt);
    } catch (error) {
      cleanUp();
      throw error;
    }
  };
}

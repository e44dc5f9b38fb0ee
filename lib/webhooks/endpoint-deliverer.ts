/**
 * Delivers one endpoint's webhooks: cuts the change log into batches and sends them, one request
 * at a time, oldest first, so each user's transitions arrive in log order.
 *
 * One loop per endpoint, in at most one process at a time: the loop holds the job lease
 * `webhook:<id>` (pulse_job_leases) and renews it every third of its TTL. The lease saves work;
 * correctness rests on the store: a batch is written (with its webhook-id) before its first
 * request and deleted only after a 2xx, and cutting moves the cursor with a compare-and-set. A
 * crash or a lost lease can therefore only repeat a request, with the same webhook-id.
 *
 * While the head batch fails, the log is still cut every few seconds, into batches that wait
 * behind it: once the receiver is back, the backlog goes out in full batches
 * (WEBHOOKS_BATCH_MAX_EVENTS), with no big read of the log in the way.
 */
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { releaseJobLease, tryAcquireJobLease } from '../store/job-lease.ts';
import { readEventsSince } from '../store/presence-log.ts';
import type { Executor } from '../store/pulse-store.ts';
import {
  cutBatches,
  loadEndpoint,
  readBacklog,
  recordFailure,
  takePending,
  TRANSITION_REASONS,
  type Backlog,
  type PendingBatch,
  type WebhookEndpoint,
  type WebhookEvent,
} from '../store/webhook-store.ts';
import { retryDelayMs, type BackoffOptions } from './backoff.ts';
import { describeResult, type DeliveryResult, type Send } from './delivery.ts';
import { batchBody, signedHeaders, toWebhookEvent } from './payload.ts';

export interface DelivererOptions {
  batchMaxEvents: number;
  /** After a read that did not fill a batch, the next read waits this long (events gather). */
  batchWaitMs: number;
  backoff: BackoffOptions;
  /** A batch failing for this long since its first attempt is parked. */
  retryForSeconds: number;
  leaseTtlSeconds: number;
  /** How often the lease holder measures the backlog (a count over the log past the cursor). */
  backlogIntervalMs: number;
  /** This process's name in the lease table; defaults to host:pid:random. */
  holder?: string;
  /** While batches wait, the log is still cut this often (default CUT_WHILE_PENDING_MS). */
  cutWhilePendingMs?: number;
}

export interface EndpointRef {
  id: number;
  name: string;
}

export interface DelivererObserver {
  onAttempt?(
    endpoint: EndpointRef,
    result: DeliveryResult,
    durationMs: number,
    events: WebhookEvent[],
  ): void;
  onParked?(endpoint: EndpointRef, batchId: string, events: number): void;
  onBacklog?(endpoint: EndpointRef, backlog: Backlog): void;
  /** The lease was taken (true), or lost or given up (false). */
  onLease?(endpoint: EndpointRef, held: boolean): void;
  /** A tick failed (the database, most often); the loop tries again after a pause. */
  onError?(endpoint: EndpointRef, error: unknown): void;
}

export const webhookJob = (endpointId: number) => `webhook:${endpointId}`;

/** After a failed tick (database unreachable), the loop pauses this long. */
const ERROR_PAUSE_MS = 1_000;
/** With nothing to cut, the cursor is still written this often (so reads stay short). */
const IDLE_CURSOR_WRITE_MS = 5_000;
/** While batches go out back to back, the endpoint's row is read again at most this often. */
const ENDPOINT_REREAD_MS = 1_000;
/**
 * Pending batches fetched at once. The delivered ones are deleted with the next fetch, so a crash
 * sends up to this many again (same ids, in order): the price of one round trip per group.
 */
const GROUP = 8;
/**
 * While batches wait (a failing or slow receiver), the log is still cut this often, so no read
 * ever has to cover a whole outage: each covers a few seconds, and the batches come out full.
 */
const CUT_WHILE_PENDING_MS = 5_000;

export class EndpointDeliverer {
  readonly holder: string;
  private leaseHeld = false;
  private renewedAt = 0;
  private lastRead = { at: 0, full: true };
  private lastCursorWriteAt = 0;
  private lastBacklogAt = 0;
  private endpointRead: { endpoint: WebhookEndpoint; at: number } | undefined;
  /** Pending batches fetched and not yet sent, oldest first (undefined: fetch again). */
  private queue: PendingBatch[] | undefined;
  /** Delivered batches not yet deleted (deleted with the next fetch). */
  private delivered: string[] = [];
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<number> | undefined;
  private stopped = true;
  private readonly abort = new AbortController();

  constructor(
    private readonly db: Executor,
    readonly endpoint: EndpointRef,
    private readonly send: Send,
    private readonly options: DelivererOptions,
    private readonly observer: DelivererObserver = {},
  ) {
    this.holder =
      options.holder ?? `${hostname()}:${process.pid}:${randomBytes(3).toString('hex')}`;
  }

  get holdsLease(): boolean {
    return this.leaseHeld;
  }

  start(): void {
    this.stopped = false;
    this.schedule(0);
  }

  /**
   * Stops the loop: a request in flight is aborted (counted as a failed attempt, the batch stays).
   * Gives the lease up unless `release` is false. Idempotent.
   */
  async stop(options: { release?: boolean } = {}): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    this.abort.abort();
    await this.running;
    if (this.delivered.length > 0)
      await this.takePending(this.endpoint.id, 0).catch(() => undefined);
    if (this.leaseHeld && options.release !== false) {
      await releaseJobLease(this.db, webhookJob(this.endpoint.id), this.holder).catch(
        () => undefined,
      );
    }
    this.setLease(false);
  }

  /** One step of the loop; resolves to the pause before the next one (ms). Never rejects. */
  tickOnce(): Promise<number> {
    const previous = this.running ?? Promise.resolve(0);
    const run = previous
      .then(() => this.tick())
      .catch((error: unknown) => {
        this.queue = undefined;
        this.observer.onError?.(this.endpoint, error);
        return ERROR_PAUSE_MS;
      });
    this.running = run;
    return run;
  }

  private schedule(delayMs: number): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      void this.tickOnce().then((next) => this.schedule(next));
    }, delayMs);
  }

  private setLease(held: boolean): void {
    if (held !== this.leaseHeld) this.observer.onLease?.(this.endpoint, held);
    this.leaseHeld = held;
  }

  private get renewEveryMs(): number {
    return (this.options.leaseTtlSeconds * 1000) / 3;
  }

  private async tick(): Promise<number> {
    if (this.stopped) return 0;
    if (!this.leaseHeld || Date.now() - this.renewedAt >= this.renewEveryMs) {
      const at = Date.now();
      const job = webhookJob(this.endpoint.id);
      const held = await tryAcquireJobLease(
        this.db,
        job,
        this.holder,
        this.options.leaseTtlSeconds,
      );
      this.setLease(held);
      if (!held) {
        this.queue = undefined;
        return this.renewEveryMs;
      }
      this.renewedAt = at;
    }
    const endpoint = await this.readEndpoint();
    if (!endpoint?.enabled) return this.renewEveryMs;
    if (Date.now() - this.lastBacklogAt >= this.options.backlogIntervalMs) {
      this.lastBacklogAt = Date.now();
      this.observer.onBacklog?.(this.endpoint, await readBacklog(this.db, endpoint));
    }
    this.queue ??= await this.takePending(endpoint.id);
    const head = this.queue[0];
    if (head) {
      const sinceRead = Date.now() - this.lastRead.at;
      const cutEvery = this.options.cutWhilePendingMs ?? CUT_WHILE_PENDING_MS;
      if (sinceRead >= cutEvery) {
        this.queue = undefined;
        await this.cut(endpoint);
        return 0;
      }
      if (head.dueInMs > 0) {
        this.queue = undefined;
        return Math.min(head.dueInMs, this.renewEveryMs, cutEvery - sinceRead);
      }
      return this.deliver(endpoint, head);
    }
    this.queue = undefined;
    return this.cut(endpoint);
  }

  /** The endpoint's row: read again unless batches are going out back to back. */
  private async readEndpoint(): Promise<WebhookEndpoint | undefined> {
    const cached = this.endpointRead;
    if (this.queue?.length && cached && Date.now() - cached.at < ENDPOINT_REREAD_MS)
      return cached.endpoint;
    const endpoint = await loadEndpoint(this.db, this.endpoint.id);
    this.endpointRead = endpoint && { endpoint, at: Date.now() };
    return endpoint;
  }

  private async deliver(endpoint: WebhookEndpoint, head: PendingBatch): Promise<number> {
    const body = batchBody(head.events, head.createdAt);
    const started = performance.now();
    const result = await this.send(
      { url: endpoint.url, body, headers: signedHeaders(endpoint.secret, head.id, body) },
      this.abort.signal,
    );
    this.observer.onAttempt?.(this.endpoint, result, performance.now() - started, head.events);
    this.queue!.shift();
    if (result.outcome === 'delivered') {
      this.delivered.push(head.id);
      if (this.queue!.length === 0) this.queue = undefined;
      return 0;
    }
    this.queue = undefined;
    if (this.delivered.length > 0) await this.takePending(endpoint.id, 0);
    const delayMs = retryDelayMs(
      head.attempts + 1,
      this.options.backoff,
      result.outcome === 'http_error' ? result.retryAfterMs : undefined,
    );
    const next = await recordFailure(this.db, head.id, {
      delayMs,
      status: result.outcome === 'http_error' ? result.status : null,
      error: describeResult(result),
      retryForSeconds: this.options.retryForSeconds,
    });
    if (next === 'parked') {
      this.observer.onParked?.(this.endpoint, head.id, head.events.length);
      return 0;
    }
    return Math.min(delayMs, this.renewEveryMs);
  }

  /** Deletes the delivered batches and fetches the next pending ones, in one statement. */
  private async takePending(endpointId: number, limit = GROUP): Promise<PendingBatch[]> {
    const pending = await takePending(this.db, endpointId, this.delivered, limit);
    this.delivered = [];
    return pending;
  }

  /** Reads the log past the cursor and cuts what the endpoint wants into batches. */
  private async cut(endpoint: WebhookEndpoint): Promise<number> {
    const sinceRead = Date.now() - this.lastRead.at;
    if (!this.lastRead.full && sinceRead < this.options.batchWaitMs)
      return this.options.batchWaitMs - sinceRead;
    const read = await readEventsSince(this.db, endpoint.cursor);
    const reasons: readonly string[] = endpoint.reasons ?? TRANSITION_REASONS;
    const events = read.events
      .filter(
        (e) =>
          (TRANSITION_REASONS as readonly string[]).includes(e.reason) &&
          reasons.includes(e.reason) &&
          endpoint.transitions.includes(e.online ? 'online' : 'offline'),
      )
      .map(toWebhookEvent);
    this.lastRead = { at: Date.now(), full: events.length >= this.options.batchMaxEvents };
    if (events.length === 0 && Date.now() - this.lastCursorWriteAt < IDLE_CURSOR_WRITE_MS)
      return this.options.batchWaitMs;
    const batches: WebhookEvent[][] = [];
    for (let i = 0; i < events.length; i += this.options.batchMaxEvents)
      batches.push(events.slice(i, i + this.options.batchMaxEvents));
    await cutBatches(this.db, endpoint.id, endpoint.cursor, read.snapshot, batches);
    this.lastCursorWriteAt = Date.now();
    this.endpointRead = undefined; // its cursor moved
    return batches.length > 0 ? 0 : this.options.batchWaitMs;
  }
}

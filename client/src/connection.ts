/**
 * One connection to the API: the stream (GET /status/stream) that holds a user's presence and
 * carries the changes of the watched users, and what stands in for it when it cannot be held.
 *
 * - Live: the snapshot arrived; the server writes the user's heartbeats, nothing runs here but the
 *   read loop (an open stream is not a timer, so a background tab's throttling does not touch it).
 * - Not live (connecting, refused with 503, API restarting): a heartbeat loop keeps the user online,
 *   every ~half threshold with jitter, until the stream is back.
 * - Reconnects wait with full jitter, at least `Retry-After`; a 401 asks getToken once more.
 * - A server without the stream (404) is polled: heartbeats plus POST /status/batch, and the stream
 *   is tried again every few minutes.
 * - Silence longer than three keep-alive periods means a dead connection: it is dropped and redone.
 */
import { errorFrom, headersFor, subjectOf, type PulseApi } from './api.ts';
import { Backoff, parseRetryAfter, type BackoffOptions } from './backoff.ts';
import { SseParser } from './sse.ts';
import { PulseError, type ConnectionStatus, type PresenceChange } from './types.ts';

/** Until the server's first heartbeat answer says otherwise (Pulse-Online-Threshold-Seconds). */
const DEFAULT_THRESHOLD_SECONDS = 20;

export interface ConnectionHandlers {
  /** The full state of the watched users (first event of every stream, and every poll). */
  onSnapshot(states: PresenceChange[]): void;
  onChange(change: PresenceChange): void;
  onStatus(status: ConnectionStatus): void;
  onError(error: PulseError): void;
}

export interface ConnectionOptions {
  api: PulseApi;
  userId: number | undefined;
  /** Given by the caller: wins over what the server announces. */
  onlineThresholdSeconds: number | undefined;
  backoff: BackoffOptions;
  fetch: typeof fetch;
  random?: () => number;
}

/** What the connection should do: hold presence (or not) and watch these users. */
export interface Desired {
  hold: boolean;
  watch: ReadonlySet<number>;
}

/** No snapshot this long after the answer: a buffering proxy, or a server in trouble. */
const SNAPSHOT_TIMEOUT_MS = 10_000;
/** The server comments at least every 15 s: three periods of silence is a dead connection. */
const IDLE_TIMEOUT_MS = 45_000;
/** Without a stream on the server, try it again this often. */
const STREAM_PROBE_MS = 5 * 60_000;
/** Several watch() calls in a row lead to one reconnect. */
const RECONFIGURE_DELAY_MS = 20;
/** After losing the stream, the first heartbeat waits this long: a reconnect usually wins. */
const FIRST_FALLBACK_BEAT_MS = 2_000;

type Outcome =
  | { kind: 'ended'; hintMs?: number }
  | { kind: 'failed'; retryAfterMs?: number; hintMs?: number }
  | { kind: 'fatal' }
  | { kind: 'no-stream' }
  | { kind: 'reconfigure' }
  | { kind: 'stopped' };

export class PresenceConnection {
  private desired: Desired = { hold: false, watch: new Set() };
  /** What the open (or opening) stream was asked for. */
  private connected: Desired | undefined;
  private controller: AbortController | undefined;
  private running: Promise<void> | undefined;
  private stopped = false;
  private live = false;
  private pollingUntil = 0;
  private hintMs: number | undefined;
  private readonly backoff: Backoff;
  private readonly random: () => number;
  private wake: (() => void) | undefined;
  private heartbeatTimer: ReturnType<typeof setTimeout> | undefined;
  /** The online threshold the server announced on a heartbeat answer: it paces the loop. */
  private serverThresholdSeconds: number | undefined;
  /** A heartbeat in flight: close() waits for it, so it cannot land after an explicit offline. */
  private beating: Promise<void> | undefined;
  private pollTimer: ReturnType<typeof setTimeout> | undefined;
  private status: ConnectionStatus = 'idle';

  constructor(
    private readonly options: ConnectionOptions,
    private readonly handlers: ConnectionHandlers,
  ) {
    this.random = options.random ?? Math.random;
    this.backoff = new Backoff(options.backoff, this.random);
  }

  /** Changes what the connection does; reconnects only when it must (new ids, hold changed). */
  update(desired: Desired): void {
    this.desired = { hold: desired.hold, watch: new Set(desired.watch) };
    if (this.stopped) return;
    this.running ??= this.run();
    const current = this.connected;
    const covered =
      current !== undefined &&
      current.hold === desired.hold &&
      [...desired.watch].every((id) => current.watch.has(id));
    if (!covered) this.interrupt();
    this.syncHeartbeats();
  }

  /** Whether the stream is open and its snapshot arrived. */
  get isLive(): boolean {
    return this.live;
  }

  /** Closes everything and waits until nothing of this connection is left running. */
  async close(): Promise<void> {
    this.stopped = true;
    this.controller?.abort();
    this.wake?.();
    clearTimeout(this.heartbeatTimer);
    clearTimeout(this.pollTimer);
    await this.running;
    await this.beating;
    this.setStatus('idle');
  }

  /** Drops the stream at once (page unload: before the offline request goes out). */
  abortNow(): void {
    this.stopped = true;
    this.controller?.abort();
    clearTimeout(this.heartbeatTimer);
    clearTimeout(this.pollTimer);
  }

  private interrupt(): void {
    this.controller?.abort();
    this.wake?.();
  }

  private setStatus(status: ConnectionStatus): void {
    if (status === this.status) return;
    this.status = status;
    this.handlers.onStatus(status);
  }

  private wants(): boolean {
    return this.desired.hold || this.desired.watch.size > 0;
  }

  /** Sleeps until `ms` pass or something changes. */
  private async pause(ms: number): Promise<void> {
    await new Promise<void>((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        resolve();
      }
      this.wake = done;
    });
    this.wake = undefined;
  }

  private async run(): Promise<void> {
    while (!this.stopped) {
      if (!this.wants()) {
        this.setStatus('idle');
        await this.pause(60_000);
        continue;
      }
      if (Date.now() < this.pollingUntil) {
        this.setStatus('polling');
        this.syncHeartbeats(0);
        this.schedulePoll(0);
        await this.pause(this.pollingUntil - Date.now());
        clearTimeout(this.pollTimer);
        continue;
      }
      await this.sleepReconfigureDelay();
      if (this.stopped) break;
      const outcome = await this.connectOnce();
      this.live = false;
      this.connected = undefined;
      this.syncHeartbeats();
      if (outcome.kind === 'stopped' || this.stopped) break;
      if (outcome.kind === 'reconfigure') continue;
      if (outcome.kind === 'no-stream') {
        this.pollingUntil = Date.now() + STREAM_PROBE_MS;
        // No stream will come to hold the user: the first heartbeat goes out at once.
        clearTimeout(this.heartbeatTimer);
        this.heartbeatTimer = undefined;
        continue;
      }
      if (outcome.kind === 'fatal') {
        // A request the server will refuse again (bad ids, forbidden): wait for a new desire.
        this.setStatus('backoff');
        await this.pause(this.backoff.next());
        continue;
      }
      if (outcome.kind === 'ended') this.backoff.reset();
      const hint = outcome.hintMs ?? this.hintMs;
      const delay = this.backoff.next(
        outcome.kind === 'failed' ? outcome.retryAfterMs : undefined,
        hint,
      );
      this.setStatus('backoff');
      await this.pause(delay);
    }
  }

  private async sleepReconfigureDelay(): Promise<void> {
    await new Promise((resolve) => setTimeout(resolve, RECONFIGURE_DELAY_MS));
  }

  private streamUrl(desired: Desired): string {
    const query: string[] = [];
    if (desired.watch.size > 0) {
      query.push(`watch=${[...desired.watch].sort((a, b) => a - b).join(',')}`);
    }
    // Only start() holds presence: a stream that merely watches asks for nothing more.
    if (desired.hold) {
      query.push('hold=true');
      if (this.options.userId !== undefined) query.push(`user_id=${this.options.userId}`);
      const { id, kind } = this.options.api.device;
      query.push(`device_id=${encodeURIComponent(id)}`, `device_kind=${kind}`);
    }
    return `${this.options.api.base}/status/stream${query.length ? `?${query.join('&')}` : ''}`;
  }

  private async connectOnce(): Promise<Outcome> {
    const desired = this.desired;
    const controller = new AbortController();
    this.controller = controller;
    this.connected = desired;
    this.setStatus('connecting');
    const credentials = this.options.api.credentials;
    let response: Response;
    try {
      for (let attempt = 0; ; attempt += 1) {
        const token = await credentials.token();
        if (controller.signal.aborted) return this.abortOutcome();
        response = await this.options.fetch(this.streamUrl(desired), {
          headers: { accept: 'text/event-stream', ...headersFor(token, false) },
          signal: controller.signal,
        });
        if (response.status === 401 && attempt === 0 && credentials.canRefresh) {
          await response.body?.cancel();
          credentials.invalidate();
          continue;
        }
        break;
      }
    } catch (error) {
      if (controller.signal.aborted) return this.abortOutcome();
      this.handlers.onError(asPulseError(error));
      return { kind: 'failed' };
    }

    if (!response.ok || response.body === null) {
      const error = await errorFrom(response);
      const retryAfterMs = parseRetryAfter(response.headers.get('retry-after'));
      // No such route: a Pulse from before the stream, or a proxy that does not pass it.
      if ([404, 405, 501].includes(response.status)) return { kind: 'no-stream' };
      this.handlers.onError(error);
      if ([400, 403, 413, 414].includes(response.status)) return { kind: 'fatal' };
      return retryAfterMs === undefined ? { kind: 'failed' } : { kind: 'failed', retryAfterMs };
    }
    return this.read(response.body, controller);
  }

  private abortOutcome(): Outcome {
    return this.stopped ? { kind: 'stopped' } : { kind: 'reconfigure' };
  }

  private async read(
    body: ReadableStream<Uint8Array>,
    controller: AbortController,
  ): Promise<Outcome> {
    let failure: 'idle' | 'no-snapshot' | undefined;
    let watchdog: ReturnType<typeof setTimeout> | undefined;
    const arm = (ms: number, reason: 'idle' | 'no-snapshot') => {
      clearTimeout(watchdog);
      watchdog = setTimeout(() => {
        failure = reason;
        controller.abort();
      }, ms);
    };
    arm(SNAPSHOT_TIMEOUT_MS, 'no-snapshot');

    const parser = new SseParser({
      onRetry: (ms) => {
        this.hintMs = ms;
      },
      onEvent: (event) => {
        if (event.event === 'snapshot') {
          const states = parseStates(event.data);
          if (!states) return;
          this.live = true;
          this.backoff.reset();
          this.syncHeartbeats();
          this.setStatus('live');
          this.handlers.onSnapshot(states);
        } else if (event.event === 'change') {
          const change = parseChange(event.data);
          if (change) this.handlers.onChange(change);
        }
      },
    });

    const reader = body.getReader();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        parser.pushBytes(value);
        // After the chunk is parsed: the one that carried the snapshot starts the idle watchdog.
        if (this.live) arm(IDLE_TIMEOUT_MS, 'idle');
      }
    } catch (error) {
      if (!controller.signal.aborted) {
        this.handlers.onError(new PulseError('network', messageOf(error)));
        return { kind: 'failed' };
      }
    } finally {
      clearTimeout(watchdog);
      reader.releaseLock();
    }
    if (failure !== undefined) {
      this.handlers.onError(
        new PulseError(
          'network',
          failure === 'idle'
            ? 'the stream went silent (no keep-alive): reconnecting'
            : 'the stream sent no snapshot: is a proxy buffering it?',
        ),
      );
      return { kind: 'failed' };
    }
    if (controller.signal.aborted) return this.abortOutcome();
    // The server ended the stream (a restart, a deploy): come back after its hint, with jitter.
    return this.hintMs === undefined ? { kind: 'ended' } : { kind: 'ended', hintMs: this.hintMs };
  }

  /** The user whose presence is held, when it can be known here. */
  private heldUserId(): number | undefined {
    return this.options.userId ?? subjectOf(this.options.api.credentials.current);
  }

  private heartbeatIntervalMs(): number {
    // Half the threshold, minus up to 20% jitter: two chances per threshold, never in lockstep.
    const threshold =
      this.options.onlineThresholdSeconds ??
      this.serverThresholdSeconds ??
      DEFAULT_THRESHOLD_SECONDS;
    const half = (threshold * 1000) / 2;
    return Math.round(half * (0.8 + 0.2 * this.random()));
  }

  /** Runs the heartbeat loop exactly while presence is wanted and no stream holds it. */
  private syncHeartbeats(firstDelayMs = FIRST_FALLBACK_BEAT_MS): void {
    const needed = !this.stopped && this.desired.hold && !this.live;
    if (!needed) {
      clearTimeout(this.heartbeatTimer);
      this.heartbeatTimer = undefined;
      return;
    }
    if (this.heartbeatTimer !== undefined) return;
    this.heartbeatTimer = setTimeout(() => this.startBeat(), firstDelayMs);
  }

  private startBeat(): void {
    this.beating = this.beat().finally(() => {
      this.beating = undefined;
    });
  }

  /** Never rejects: a failure (getToken's too) is reported, and the loop goes on. */
  private async beat(): Promise<void> {
    try {
      const userId = this.heldUserId() ?? subjectOf(await this.options.api.credentials.token());
      if (userId !== undefined) {
        this.serverThresholdSeconds =
          (await this.options.api.heartbeat(userId)) ?? this.serverThresholdSeconds;
      }
    } catch (error) {
      this.handlers.onError(asPulseError(error));
    }
    if (this.heartbeatTimer === undefined || this.stopped || this.live) return;
    this.heartbeatTimer = setTimeout(() => this.startBeat(), this.heartbeatIntervalMs());
  }

  private schedulePoll(ms: number): void {
    clearTimeout(this.pollTimer);
    this.pollTimer = setTimeout(() => void this.poll(), ms);
  }

  private async poll(): Promise<void> {
    const ids = [...this.desired.watch];
    if (ids.length > 0) {
      try {
        this.handlers.onSnapshot(
          (await this.options.api.batch(ids)).filter(isChange).map(changeOf),
        );
      } catch (error) {
        this.handlers.onError(asPulseError(error));
      }
    }
    if (this.stopped || Date.now() >= this.pollingUntil) return;
    this.schedulePoll(this.heartbeatIntervalMs());
  }
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function asPulseError(error: unknown): PulseError {
  return error instanceof PulseError ? error : new PulseError('network', messageOf(error));
}

function isChange(value: unknown): value is PresenceChange {
  const v = value as PresenceChange | null;
  return (
    typeof v === 'object' &&
    v !== null &&
    typeof v.user_id === 'number' &&
    typeof v.is_online === 'boolean'
  );
}

/** The user, the state and (when the server sent it) the devices summary: nothing else. */
function changeOf(value: PresenceChange): PresenceChange {
  const devices = value.devices;
  const valid =
    typeof devices === 'object' &&
    devices !== null &&
    typeof devices.count === 'number' &&
    Array.isArray(devices.kinds);
  return valid
    ? { user_id: value.user_id, is_online: value.is_online, devices }
    : { user_id: value.user_id, is_online: value.is_online };
}

function parseStates(data: string): PresenceChange[] | undefined {
  try {
    const value: unknown = JSON.parse(data);
    return Array.isArray(value) ? value.filter(isChange).map(changeOf) : undefined;
  } catch {
    return undefined;
  }
}

function parseChange(data: string): PresenceChange | undefined {
  try {
    const value: unknown = JSON.parse(data);
    return isChange(value) ? changeOf(value) : undefined;
  } catch {
    return undefined;
  }
}

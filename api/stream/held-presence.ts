/**
 * Connection-held presence: while a stream is open, the server keeps its caller online by writing
 * the caller's heartbeats itself. One timer per process beats for every held user at once, through
 * the group-commit writer, in chunks of the writer's batch size: 10,000 open streams cost
 * 10,000 / HEARTBEAT_FLUSH_MAX_IDS statements per beat, not 10,000. Nothing runs while no stream
 * holds anyone. When the last stream of a user closes, beats stop and the row expires by the
 * normal rule (offline at most ONLINE_THRESHOLD_SECONDS later).
 *
 * The beat follows the threshold in force (pulse_settings, read at most once a second while
 * someone is held): a third of it, checked every tick (at most a second). A beat that failed is
 * retried at the next tick, so the database coming back after an outage gets every held user's
 * heartbeat within a tick; `beatNow` lets change detection write it before its first poll after
 * a failure (api/assemble.ts), so watchers of held users see no offline/online flap.
 */
import type { HeartbeatWriter } from '../write/heartbeat-writer.ts';
import type { DeviceKind } from '../../lib/store/pulse-store.ts';
import type { OnlineThreshold } from '../../lib/store/online-threshold.ts';

export interface HeldPresenceOptions {
  /** The threshold in force: beats come every third of it. */
  threshold: OnlineThreshold;
  /** Ids per writer call (HEARTBEAT_FLUSH_MAX_IDS): each call becomes one statement. */
  chunkIds: number;
  /** A beat that was not written (database down, queue full): retried at the next tick. */
  onBeatError(error: unknown): void;
  /** Longest time between two checks of whether a beat is due (default 1 s). */
  maxTickMs?: number;
  /**
   * Users the timer must not beat for now: those leaving with a grace (POST /status/offline?
   * grace_ms), whose closing stream would otherwise cancel their own offline. A new hold()
   * still beats at once (a reload comes back). `deviceId`: the device held (null: none named).
   */
  leaving?: (userId: number, deviceId: string | null) => boolean;
}

/** The device a stream holds presence from (issue 22): none named is the user's unnamed one. */
export interface HeldDevice {
  id: string | null;
  kind: DeviceKind | null;
}

const NO_DEVICE: HeldDevice = { id: null, kind: null };

interface Holding {
  userId: number;
  device: HeldDevice;
  /** Open streams holding this (user, device). */
  streams: number;
}

/** Time between beats for a threshold: two beats per window at least, so one late beat is fine. */
export const beatIntervalMs = (thresholdSeconds: number): number =>
  Math.max(100, Math.floor((thresholdSeconds * 1000) / 3));

export class HeldPresence {
  /** (user, device) -> its streams (a user with two tabs of one device is beaten for once). */
  private readonly held = new Map<string, Holding>();
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  /** When the last successful beat started (performance.now()). */
  private lastBeatAt = 0;
  private failing = false;
  private beating: Promise<void> | undefined;

  constructor(
    private readonly writer: HeartbeatWriter,
    private readonly options: HeldPresenceOptions,
  ) {}

  /** Devices of users held online by this process right now. */
  get size(): number {
    return this.held.size;
  }

  /**
   * Holds `userId` online until the returned release function is called (idempotent). Writes a
   * first heartbeat at once and rejects, holding nothing, if it could not be written.
   */
  async hold(userId: number, device: HeldDevice = NO_DEVICE): Promise<() => void> {
    const key = device.id === null ? String(userId) : `${userId}/${device.id}`;
    const holding = this.held.get(key);
    // The newest stream's kind wins (a client may correct it).
    if (holding) holding.device = device;
    else this.held.set(key, { userId, device, streams: 0 });
    this.held.get(key)!.streams += 1;
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      const entry = this.held.get(key);
      if (entry && entry.streams > 1) entry.streams -= 1;
      else this.held.delete(key);
      if (this.held.size === 0) this.stopTimer();
    };
    try {
      await this.writer.record([userId], { held: true, devices: tagsOf([device]) });
    } catch (error) {
      release();
      throw error;
    }
    if (!this.closed && this.timer === undefined && this.held.size > 0) {
      this.lastBeatAt = performance.now();
      this.scheduleTick();
    }
    return release;
  }

  /**
   * Beats for every held user now (or waits for the beat in flight); never rejects. Resolves true
   * when every chunk was written.
   */
  async beatNow(): Promise<boolean> {
    if (this.held.size === 0 || this.closed) return true;
    this.beating ??= this.beat().finally(() => (this.beating = undefined));
    await this.beating;
    return !this.failing;
  }

  /** Stops beating (on shutdown, before the writer closes). */
  close(): void {
    this.closed = true;
    this.stopTimer();
  }

  private stopTimer(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  private scheduleTick(): void {
    const interval = beatIntervalMs(this.options.threshold.seconds);
    // Half an interval: a beat is at most 1.5 intervals after the last, two per threshold window.
    const tickMs = Math.min(Math.max(50, interval / 2), this.options.maxTickMs ?? 1_000);
    this.timer = setTimeout(() => this.tick(), tickMs);
    this.timer.unref();
  }

  private tick(): void {
    // The timer stays set while the threshold is read: hold() must not start a second one.
    void this.options.threshold.current().then((seconds) => {
      this.timer = undefined;
      if (this.closed || this.held.size === 0) return;
      const due = this.failing || performance.now() - this.lastBeatAt >= beatIntervalMs(seconds);
      if (due && this.beating === undefined) void this.beatNow();
      this.scheduleTick();
    });
  }

  private async beat(): Promise<void> {
    const started = performance.now();
    const leaving = this.options.leaving;
    const beats = [...this.held.values()].filter(
      (entry) => leaving === undefined || !leaving(entry.userId, entry.device.id),
    );
    const writes: Promise<void>[] = [];
    for (let i = 0; i < beats.length; i += this.options.chunkIds) {
      const chunk = beats.slice(i, i + this.options.chunkIds);
      const named = chunk.some((entry) => entry.device !== NO_DEVICE);
      writes.push(
        this.writer.record(
          chunk.map((entry) => entry.userId),
          { held: true, devices: named ? tagsOf(chunk.map((entry) => entry.device)) : undefined },
        ),
      );
    }
    const failures = (await Promise.allSettled(writes)).filter((r) => r.status === 'rejected');
    this.failing = failures.length > 0;
    if (this.failing) this.options.onBeatError(failures[0]!.reason);
    else this.lastBeatAt = started;
  }
}

/** The writer's device tags of `devices`; undefined when none is named (the plain statement). */
function tagsOf(devices: readonly HeldDevice[]) {
  if (devices.every((device) => device.id === null && device.kind === null)) return undefined;
  return { ids: devices.map((device) => device.id), kinds: devices.map((device) => device.kind) };
}

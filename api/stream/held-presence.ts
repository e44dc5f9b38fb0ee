/**
 * Connection-held presence: while a stream is open, the server keeps its caller online by writing
 * the caller's heartbeats itself. One timer per process beats for every held user at once, through
 * the group-commit writer, in chunks of the writer's batch size: 10,000 open streams cost
 * 10,000 / HEARTBEAT_FLUSH_MAX_IDS statements per beat, not 10,000. Nothing runs while no stream
 * holds anyone. When the last stream of a user closes, beats stop and the row expires by the
 * normal rule (offline at most ONLINE_THRESHOLD_SECONDS later).
 */
import type { HeartbeatWriter } from '../write/heartbeat-writer.ts';

export interface HeldPresenceOptions {
  /** Time between beats; a third of the online threshold leaves two beats' margin. */
  intervalMs: number;
  /** Ids per writer call (HEARTBEAT_FLUSH_MAX_IDS): each call becomes one statement. */
  chunkIds: number;
  /** A beat that was not written (database down, queue full): logged, retried next beat. */
  onBeatError(error: unknown): void;
}

export class HeldPresence {
  /** User id -> open streams holding it (a user with two tabs is beaten for once). */
  private readonly held = new Map<number, number>();
  private timer: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(
    private readonly writer: HeartbeatWriter,
    private readonly options: HeldPresenceOptions,
  ) {}

  /** Users held online by this process right now. */
  get size(): number {
    return this.held.size;
  }

  /**
   * Holds `userId` online until the returned release function is called (idempotent). Writes a
   * first heartbeat at once and rejects, holding nothing, if it could not be written.
   */
  async hold(userId: number): Promise<() => void> {
    this.held.set(userId, (this.held.get(userId) ?? 0) + 1);
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      const count = (this.held.get(userId) ?? 1) - 1;
      if (count > 0) this.held.set(userId, count);
      else this.held.delete(userId);
      if (this.held.size === 0) this.stopTimer();
    };
    try {
      await this.writer.record([userId]);
    } catch (error) {
      release();
      throw error;
    }
    if (!this.closed && this.timer === undefined && this.held.size > 0) {
      this.timer = setInterval(() => this.beat(), this.options.intervalMs);
      this.timer.unref();
    }
    return release;
  }

  /** Stops beating (on shutdown, before the writer closes). */
  close(): void {
    this.closed = true;
    this.stopTimer();
  }

  private stopTimer(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  private beat(): void {
    const ids = [...this.held.keys()];
    for (let i = 0; i < ids.length; i += this.options.chunkIds) {
      this.writer
        .record(ids.slice(i, i + this.options.chunkIds))
        .catch((error: unknown) => this.options.onBeatError(error));
    }
  }
}

/**
 * Offline after a grace (`POST /status/offline?grace_ms=`): what a page sends as it goes away,
 * since a page cannot tell a close from a reload. The users go offline `graceMs` after the request
 * unless they sent a heartbeat since (the reloaded page's stream beats at once), judged by the
 * database clock (read when asked, compared in the DELETE), so a beat through another API process
 * cancels it too.
 */
import type { ShardRouter } from '../../lib/citus/shard-routing.ts';
import {
  databaseNow,
  setDevicesOffline,
  setOffline,
  type Executor,
} from '../../lib/store/pulse-store.ts';

interface Pending {
  userIds: readonly number[];
  /** The device leaving, per user id (null: the unnamed one); undefined: every device. */
  devices: ReadonlyArray<string | null> | undefined;
  /** The database's clock when it was asked (databaseNow). */
  askedAt: string;
  timer: NodeJS.Timeout;
}

/** What a pending offline names: a user on every device (`7`) or one device (`7/phone`). */
const leavingKey = (userId: number, device: string | null | undefined) =>
  device === undefined ? String(userId) : `${userId}/${device ?? ''}`;

export class DeferredOffline {
  private readonly pending = new Set<Pending>();
  /** How many pending offlines name each user (every device) or (user, device). */
  private readonly leavingUsers = new Map<string, number>();
  private closed = false;

  constructor(
    private readonly db: Executor,
    private readonly onError: (error: unknown) => void,
    /** On Citus, where each user's shard is: a device's offline runs per shard. */
    private readonly router?: ShardRouter,
  ) {}

  /**
   * Takes the users offline after `graceMs` unless they beat meanwhile; with `devices` (parallel
   * to `userIds`), only those devices, unless they beat meanwhile.
   */
  async schedule(
    userIds: readonly number[],
    graceMs: number,
    devices?: ReadonlyArray<string | null>,
  ): Promise<void> {
    if (this.closed) throw new Error('deferred offline is closed');
    const keys = userIds.map((id, index) => leavingKey(id, devices?.[index] ?? undefined));
    // Leaving from now on (the page's own held beats stop counting), before the clock is read.
    for (const key of keys) this.leavingUsers.set(key, (this.leavingUsers.get(key) ?? 0) + 1);
    let askedAt: string;
    try {
      // The database's clock, read before the caller is answered: any beat sent after the answer
      // commits later, through whichever process, so it cancels the offline.
      askedAt = await databaseNow(this.db);
    } catch (error) {
      this.unmark(keys);
      throw error;
    }
    const entry: Pending = {
      userIds,
      devices,
      askedAt,
      timer: setTimeout(() => void this.apply(entry), graceMs),
    };
    this.pending.add(entry);
    if (this.closed) await this.apply(entry);
  }

  private unmark(keys: readonly string[]): void {
    for (const key of keys) {
      const left = (this.leavingUsers.get(key) ?? 1) - 1;
      if (left > 0) this.leavingUsers.set(key, left);
      else this.leavingUsers.delete(key);
    }
  }

  /** Whether an offline of this user, or of this device of theirs, waits for its grace to pass. */
  isLeaving(userId: number, deviceId?: string | null): boolean {
    if (this.leavingUsers.size === 0) return false;
    return (
      this.leavingUsers.has(leavingKey(userId, undefined)) ||
      (deviceId !== undefined && this.leavingUsers.has(leavingKey(userId, deviceId)))
    );
  }

  private keysOf(entry: Pending): string[] {
    return entry.userIds.map((id, index) => leavingKey(id, entry.devices?.[index] ?? undefined));
  }

  /** Applies every pending offline now, each to the users quiet since it was asked. */
  async close(): Promise<void> {
    this.closed = true;
    await Promise.all([...this.pending].map((entry) => this.apply(entry)));
  }

  private async apply(entry: Pending): Promise<void> {
    if (!this.pending.delete(entry)) return;
    clearTimeout(entry.timer);
    this.unmark(this.keysOf(entry));
    try {
      if (entry.devices === undefined) await setOffline(this.db, entry.userIds, entry.askedAt);
      else {
        await setDevicesOffline(this.db, entry.userIds, entry.devices, entry.askedAt, this.router);
      }
    } catch (error) {
      this.onError(error);
    }
  }
}

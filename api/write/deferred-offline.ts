/**
 * Offline after a grace (`POST /status/offline?grace_ms=`): what a page sends as it goes away,
 * since a page cannot tell a close from a reload. The users go offline `graceMs` after the request
 * unless they sent a heartbeat since (the reloaded page's stream beats at once), judged by the
 * database clock in the DELETE itself, so a beat through another API process cancels it too.
 */
import { setOffline, type Executor } from '../../lib/store/pulse-store.ts';

interface Pending {
  userIds: readonly number[];
  askedAt: number;
  timer: NodeJS.Timeout;
}

export class DeferredOffline {
  private readonly pending = new Set<Pending>();
  /** How many pending offlines name each user. */
  private readonly leavingUsers = new Map<number, number>();
  private closed = false;

  constructor(
    private readonly db: Executor,
    private readonly onError: (error: unknown) => void,
  ) {}

  /** Takes the users offline after `graceMs` unless they beat meanwhile. */
  schedule(userIds: readonly number[], graceMs: number): void {
    if (this.closed) throw new Error('deferred offline is closed');
    const entry: Pending = {
      userIds,
      askedAt: performance.now(),
      timer: setTimeout(() => void this.apply(entry), graceMs),
    };
    this.pending.add(entry);
    for (const id of userIds) this.leavingUsers.set(id, (this.leavingUsers.get(id) ?? 0) + 1);
  }

  /** Whether an offline of this user is waiting for its grace to pass. */
  isLeaving(userId: number): boolean {
    return this.leavingUsers.has(userId);
  }

  /** Applies every pending offline now, each to the users quiet since it was asked. */
  async close(): Promise<void> {
    this.closed = true;
    await Promise.all([...this.pending].map((entry) => this.apply(entry)));
  }

  private async apply(entry: Pending): Promise<void> {
    if (!this.pending.delete(entry)) return;
    clearTimeout(entry.timer);
    for (const id of entry.userIds) {
      const left = (this.leavingUsers.get(id) ?? 1) - 1;
      if (left > 0) this.leavingUsers.set(id, left);
      else this.leavingUsers.delete(id);
    }
    try {
      await setOffline(this.db, entry.userIds, performance.now() - entry.askedAt);
    } catch (error) {
      this.onError(error);
    }
  }
}

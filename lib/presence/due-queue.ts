/**
 * The offline detector's schedule: each marked-online user's last known heartbeat, and a binary
 * min-heap of the times they would expire (last heartbeat + threshold). Entries are never removed
 * from the heap in place: an entry whose heartbeat no longer matches the user's is skipped when it
 * comes up, so set() and delete() are O(log n) and O(1).
 */
export class DueQueue {
  private readonly lastHb = new Map<number, number>();
  private dues: number[] = [];
  private ids: number[] = [];
  private hbs: number[] = [];
  private thresholdMs = 0;

  get size(): number {
    return this.lastHb.size;
  }

  /** Records `userId`'s last heartbeat (epoch ms) and when it expires. */
  set(userId: number, lastHb: number): void {
    if (this.lastHb.get(userId) === lastHb) return;
    this.lastHb.set(userId, lastHb);
    this.push(lastHb + this.thresholdMs, userId, lastHb);
  }

  delete(userId: number): void {
    this.lastHb.delete(userId);
  }

  clear(): void {
    this.lastHb.clear();
    this.dues = [];
    this.ids = [];
    this.hbs = [];
  }

  /** A new threshold: every due time moves; the heap is rebuilt from the heartbeats. */
  rebase(thresholdMs: number): void {
    this.thresholdMs = thresholdMs;
    this.dues = [];
    this.ids = [];
    this.hbs = [];
    for (const [userId, lastHb] of this.lastHb) this.push(lastHb + thresholdMs, userId, lastHb);
  }

  /** Removes and returns up to `max` users due at `now` (epoch ms), earliest first. */
  popDue(now: number, max: number): number[] {
    const out: number[] = [];
    while (out.length < max && this.dues.length > 0 && this.dues[0]! <= now) {
      const userId = this.ids[0]!;
      const lastHb = this.hbs[0]!;
      this.popTop();
      if (this.lastHb.get(userId) !== lastHb) continue;
      this.lastHb.delete(userId);
      out.push(userId);
    }
    return out;
  }

  private push(due: number, userId: number, lastHb: number): void {
    let i = this.dues.length;
    this.dues.push(due);
    this.ids.push(userId);
    this.hbs.push(lastHb);
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (this.dues[parent]! <= due) break;
      this.move(parent, i);
      i = parent;
    }
    this.put(i, due, userId, lastHb);
  }

  private popTop(): void {
    const last = this.dues.length - 1;
    const due = this.dues[last]!;
    const userId = this.ids[last]!;
    const lastHb = this.hbs[last]!;
    this.dues.pop();
    this.ids.pop();
    this.hbs.pop();
    if (last === 0) return;
    let i = 0;
    for (;;) {
      const left = 2 * i + 1;
      if (left >= last) break;
      const right = left + 1;
      const child = right < last && this.dues[right]! < this.dues[left]! ? right : left;
      if (this.dues[child]! >= due) break;
      this.move(child, i);
      i = child;
    }
    this.put(i, due, userId, lastHb);
  }

  private move(from: number, to: number): void {
    this.dues[to] = this.dues[from]!;
    this.ids[to] = this.ids[from]!;
    this.hbs[to] = this.hbs[from]!;
  }

  private put(i: number, due: number, userId: number, lastHb: number): void {
    this.dues[i] = due;
    this.ids[i] = userId;
    this.hbs[i] = lastHb;
  }
}

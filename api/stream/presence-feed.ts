/**
 * Change detection for the live stream (GET /status/stream): which watched users went online or
 * offline, by the database clock, whichever API replica wrote the heartbeat.
 *
 * Design: multiplexed polling (Hasura's subscriptions), no LISTEN/NOTIFY.
 * - Every stream of this process registers the ids it watches here. Every `intervalMs`, one poll
 *   re-reads the union of those ids, `chunkIds` (1,000) to a statement, with the shared online rule
 *   read live from pulse_settings (`findOnlineUserIds`, a primary-key lookup per id). Cost: distinct watched ids / 1,000
 *   statements per interval, however many streams watch them; nothing at all without a stream, and
 *   nothing on the heartbeat path ever.
 * - The poll keeps the last state of every watched id. Ids whose state flipped are re-read with
 *   `readStatuses` (the reader POST /status/batch uses), and that row is the `change` event: the
 *   stream says exactly what a batch read would, field for field. A flip the re-read does not
 *   confirm (a heartbeat in between) is no change.
 * - Why not NOTIFY: every notifying commit takes a database-wide lock (serialized commits), payloads
 *   stop at 8,000 bytes, and LISTEN does not survive PgBouncer's transaction pooling. A threshold
 *   crossing is not a write at all, so it could not be notified anyway: some polling is needed.
 *
 * A new stream's snapshot is read with `readStatuses` after its ids are registered. It then gets
 * no events until the first poll that started after its snapshot was read; that poll sends it the
 * difference between its snapshot and the poll's state, after which it follows the shared state.
 * So a stream never misses a change nor gets one that contradicts what it was told.
 *
 * After a failed poll (the database down), the next one first awaits `beforeRecovery` (held
 * presence's beat): users held online by this process are then written before they are read.
 */
import {
  findOnlineUserIds,
  normalizeUserIds,
  readStatuses,
  type Executor,
  type UserStatus,
} from '../../lib/store/pulse-store.ts';

export interface PresenceFeedOptions {
  intervalMs: number;
  /** Ids per detection statement. */
  chunkIds?: number;
  /** Detection statements running at once (each holds a pool connection meanwhile). */
  concurrency?: number;
  /**
   * Awaited before the first poll after a failed one (the database coming back): the API writes
   * its held users' heartbeats there, so that poll does not see them expired by the outage.
   */
  beforeRecovery?: () => Promise<unknown>;
}

export interface PresenceFeedObserver {
  /** Every statement the feed runs: `detect` (the poll) or `describe` (re-reading flipped ids). */
  onStatement?(info: { kind: 'detect' | 'describe'; seconds: number; ok: boolean }): void;
  /** A poll failed; the next one retries (states are kept). */
  onPollError?(error: unknown): void;
}

/** Receives the changes of one poll for one subscriber, in one call. */
export type Deliver = (changes: readonly UserStatus[]) => void;

export interface FeedSubscription {
  /** The statuses of the watched ids when the subscription started (as POST /status/batch). */
  readonly snapshot: UserStatus[];
  /** Stops deliveries; idempotent (a plain function: it may be passed around on its own). */
  readonly close: () => void;
}

type Phase = 'snapshot' | 'pending' | 'live' | 'closed';

/** Streams given their changes before the feed lets the event loop run (and sockets flush). */
const DELIVERY_SLICE = 500;

class Subscriber {
  phase: Phase = 'snapshot';
  /** What the snapshot said, until the subscriber goes live (then dropped). */
  told: Map<number, boolean> | undefined = new Map<number, boolean>();
  /** Eligible to go live in the first poll whose sequence number is above this. */
  liveAfterPoll = Infinity;

  constructor(
    readonly ids: readonly number[],
    readonly deliver: Deliver,
  ) {}
}

export class PresenceFeed {
  /**
   * Who watches each id. Arrays, not Sets: at 10,000 streams x 100 ids this index holds a million
   * entries, and a Set's hash table costs about 3x an array's slot per entry. Removal scans one
   * id's watchers, a few dozen on average.
   */
  private readonly watchers = new Map<number, Subscriber[]>();
  private readonly state = new Map<number, boolean>();
  private readonly pending = new Set<Subscriber>();
  private pollSeq = 0;
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private closed = false;
  private failed = false;
  private readonly chunkIds: number;
  private readonly concurrency: number;

  constructor(
    private readonly db: Executor,
    private readonly options: PresenceFeedOptions,
    private readonly observer: PresenceFeedObserver = {},
  ) {
    this.chunkIds = options.chunkIds ?? 1000;
    this.concurrency = options.concurrency ?? 2;
  }

  /** Distinct ids watched by the streams of this process. */
  get watchedIds(): number {
    return this.watchers.size;
  }

  /** Registers `userIds` (duplicates allowed, answered as given) and reads their snapshot. */
  async subscribe(userIds: readonly number[], deliver: Deliver): Promise<FeedSubscription> {
    if (this.closed) throw new Error('the presence feed is closed');
    const subscriber = new Subscriber(normalizeUserIds(userIds), deliver);
    for (const id of subscriber.ids) {
      const watching = this.watchers.get(id);
      if (watching) watching.push(subscriber);
      else this.watchers.set(id, [subscriber]);
    }
    this.schedule(this.options.intervalMs);
    let snapshot: UserStatus[];
    try {
      snapshot = await readStatuses(this.db, userIds);
    } catch (error) {
      this.remove(subscriber);
      throw error;
    }
    if (subscriber.phase === 'snapshot') {
      for (const row of snapshot) subscriber.told?.set(row.user_id, row.is_online);
      subscriber.phase = 'pending';
      // A poll in flight may have read before the snapshot: only a later one may reconcile.
      subscriber.liveAfterPoll = this.pollSeq;
      if (subscriber.ids.length > 0) this.pending.add(subscriber);
      else {
        subscriber.phase = 'live';
        subscriber.told = undefined;
      }
    }
    return { snapshot, close: () => this.remove(subscriber) };
  }

  /** Stops polling; waits for a poll in flight. Idempotent. */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    this.timer = undefined;
    await this.running;
  }

  private remove(subscriber: Subscriber): void {
    if (subscriber.phase === 'closed') return;
    subscriber.phase = 'closed';
    this.pending.delete(subscriber);
    for (const id of subscriber.ids) {
      const watching = this.watchers.get(id);
      if (!watching) continue;
      const at = watching.indexOf(subscriber);
      if (at < 0) continue;
      // Order among one id's watchers does not matter: the last one takes the freed slot.
      const last = watching.pop()!;
      if (at < watching.length) watching[at] = last;
      if (watching.length === 0) {
        this.watchers.delete(id);
        this.state.delete(id);
      }
    }
  }

  private schedule(delayMs: number): void {
    if (this.closed || this.timer !== undefined || this.running !== undefined) return;
    if (this.watchers.size === 0) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      const started = performance.now();
      this.running = this.pollOnce()
        .catch((error: unknown) => {
          this.failed = true;
          this.observer.onPollError?.(error);
        })
        .finally(() => {
          this.running = undefined;
          // Polls never overlap: a slow one delays the next instead of piling up.
          this.schedule(Math.max(0, this.options.intervalMs - (performance.now() - started)));
        });
    }, delayMs);
    // The feed alone never keeps a process alive (the HTTP server does).
    this.timer.unref();
  }

  private async timed<T>(kind: 'detect' | 'describe', run: () => Promise<T>): Promise<T> {
    const started = performance.now();
    let ok = false;
    try {
      const result = await run();
      ok = true;
      return result;
    } finally {
      this.observer.onStatement?.({ kind, seconds: (performance.now() - started) / 1000, ok });
    }
  }

  /** Runs `work` on each chunk of `ids`, at most `concurrency` at once. */
  private async chunked(ids: readonly number[], work: (chunk: number[]) => Promise<void>) {
    const chunks: number[][] = [];
    for (let i = 0; i < ids.length; i += this.chunkIds)
      chunks.push(ids.slice(i, i + this.chunkIds));
    let next = 0;
    const worker = async () => {
      while (next < chunks.length) await work(chunks[next++]!);
    };
    await Promise.all(Array.from({ length: Math.min(this.concurrency, chunks.length) }, worker));
  }

  private async pollOnce(): Promise<void> {
    if (this.failed && this.options.beforeRecovery) await this.options.beforeRecovery();
    await this.poll();
    this.failed = false;
  }

  private async poll(): Promise<void> {
    const seq = ++this.pollSeq;
    const eligible = [...this.pending].filter((s) => s.liveAfterPoll < seq);
    const ids = [...this.watchers.keys()].sort((a, b) => a - b);

    const online = new Set<number>();
    await this.chunked(ids, async (chunk) => {
      const found = await this.timed('detect', () => findOnlineUserIds(this.db, chunk));
      for (const id of found) online.add(id);
    });

    // Flipped since the last poll, or different from what a subscriber going live was told.
    const flipped = new Set<number>();
    const firstSeen = new Map<number, boolean>();
    for (const id of ids) {
      const before = this.state.get(id);
      if (before === undefined) firstSeen.set(id, online.has(id));
      else if (before !== online.has(id)) flipped.add(id);
    }
    for (const subscriber of eligible) {
      for (const id of subscriber.ids) {
        if (subscriber.told?.get(id) !== online.has(id)) flipped.add(id);
      }
    }

    const rows: UserStatus[] = [];
    await this.chunked(
      [...flipped].sort((a, b) => a - b),
      async (chunk) => {
        rows.push(...(await this.timed('describe', () => readStatuses(this.db, chunk))));
      },
    );

    // Apply only now: a failed statement above leaves every state as it was.
    for (const [id, isOnline] of firstSeen) if (this.watchers.has(id)) this.state.set(id, isOnline);
    const outbox = new Map<Subscriber, UserStatus[]>();
    const send = (subscriber: Subscriber, row: UserStatus) => {
      const list = outbox.get(subscriber);
      if (list) list.push(row);
      else outbox.set(subscriber, [row]);
    };
    const described = new Map<number, UserStatus>();
    for (const row of rows) {
      described.set(row.user_id, row);
      const watching = this.watchers.get(row.user_id);
      if (!watching) continue;
      const before = this.state.get(row.user_id);
      this.state.set(row.user_id, row.is_online);
      if (before === row.is_online) continue;
      for (const subscriber of watching) if (subscriber.phase === 'live') send(subscriber, row);
    }
    for (const subscriber of eligible) {
      if (subscriber.phase !== 'pending') continue;
      for (const id of subscriber.ids) {
        const row = described.get(id);
        if (row && row.is_online !== subscriber.told?.get(id)) send(subscriber, row);
      }
      subscriber.told = undefined;
      subscriber.phase = 'live';
      this.pending.delete(subscriber);
    }
    let delivered = 0;
    for (const [subscriber, changes] of outbox) {
      outbox.delete(subscriber);
      if (subscriber.phase !== 'live') continue;
      try {
        subscriber.deliver(changes);
      } catch (error) {
        // One broken subscriber must not cost the others their changes.
        this.observer.onPollError?.(error);
      }
      // Node sends what a response writes only once the current task ends (it corks the socket
      // until the next tick). Delivering to 10,000 streams in one go held every stream's events
      // in memory at once, long enough for V8 to promote them, and kept the event loop from
      // anything else meanwhile: yield between slices instead.
      if (++delivered % DELIVERY_SLICE === 0) await new Promise((resolve) => setImmediate(resolve));
    }
  }
}

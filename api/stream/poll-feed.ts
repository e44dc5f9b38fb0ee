/**
 * The polling fallback of the live stream's change feed (STREAM_CHANGE_SOURCE=poll; the default is
 * the change log, log-feed.ts): which watched users went online or offline, by the database clock,
 * whichever API replica wrote the heartbeat. Its cost grows with the distinct watched ids of each
 * process, not with the changes; kept for databases where the log cannot be read by snapshot
 * (docs/stream.md).
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
 *
 * Privacy and who sees whom (issue 24). Invisible users read as offline to everyone, so detection
 * and the described rows already apply pulse_privacy: that state is shared. The operator's rule
 * (pulse_visible_users), while it exists, is per viewer: each subscriber keeps the set of its
 * watched ids that are online but hidden from its viewer (`hidden`), re-evaluated every poll, after
 * the rows are described, for every subscriber's online (or just-gone-offline) watched ids in one
 * statement per 10,000 pairs (the rule runs once per distinct viewer). A subscriber is
 * told what its viewer may see: a hidden user as `{is_online: false, last_seen: null}`, exactly
 * like an unknown offline user; a user hidden, then visible again (or the reverse) is a change. So
 * a user removed from a friends list stops appearing online within one poll, and the same holds
 * whatever produces the shared state (this poll, or a change log): apply `refreshHidden` after it.
 */
import {
  findOnlineUserIds,
  normalizeUserIds,
  readStatuses,
  type Executor,
  type UserStatus,
} from '../../lib/store/pulse-store.ts';
import type { VisibilityRule } from '../read/visibility-rule.ts';
import {
  findVisibleInChunks,
  hiddenRow,
  type ChangeFeed,
  type Deliver,
  type FeedSubscription,
} from './change-feed.ts';
import { WatcherIndex } from './watcher-index.ts';

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
  /** Whether the operator's visibility rule exists (api/read/visibility-rule.ts); absent: never. */
  rule?: VisibilityRule;
}

export interface PresenceFeedObserver {
  /**
   * Every statement the feed runs: `detect` (the poll), `describe` (re-reading flipped ids) or
   * `visibility` (the operator's rule over the online watched ids, per viewer).
   */
  onStatement?(info: {
    kind: 'detect' | 'describe' | 'visibility';
    seconds: number;
    ok: boolean;
  }): void;
  /** A poll failed; the next one retries (states are kept). */
  onPollError?(error: unknown): void;
}

type Phase = 'snapshot' | 'pending' | 'live' | 'closed';

/** Streams given their changes before the feed lets the event loop run (and sockets flush). */
const DELIVERY_SLICE = 500;

class Subscriber {
  phase: Phase = 'snapshot';
  /** Watched ids online but hidden from `viewer` by the rule, as of the last poll; undefined: none. */
  hidden: Set<number> | undefined;
  /** What the snapshot said, until the subscriber goes live (then dropped). */
  told: Map<number, boolean> | undefined = new Map<number, boolean>();
  /** Eligible to go live in the first poll whose sequence number is above this. */
  liveAfterPoll = Infinity;

  constructor(
    readonly ids: readonly number[],
    readonly deliver: Deliver,
    /** Who watches, for the rule: a user id, null (not a user), undefined (not subject to it). */
    readonly viewer: number | null | undefined,
  ) {}
}

export class PollPresenceFeed implements ChangeFeed {
  private readonly watchers = new WatcherIndex<Subscriber>();
  private readonly state = new Map<number, boolean>();
  private readonly pending = new Set<Subscriber>();
  /** Live subscribers with a non-empty `hidden` set. */
  private readonly hiding = new Set<Subscriber>();
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

  /**
   * Registers `userIds` (duplicates allowed, answered as given) and reads their snapshot, as
   * `viewer` may see them (the caller's user id, or null for a caller that is not a user).
   */
  async subscribe(
    userIds: readonly number[],
    deliver: Deliver,
    viewer?: number | null,
  ): Promise<FeedSubscription> {
    if (this.closed) throw new Error('the presence feed is closed');
    const subscriber = new Subscriber(normalizeUserIds(userIds), deliver, viewer);
    this.watchers.add(subscriber, subscriber.ids);
    this.schedule(this.options.intervalMs);
    let snapshot: UserStatus[];
    try {
      const ruled = viewer !== undefined && (await this.ruleInForce());
      snapshot = await readStatuses(this.db, userIds, ruled ? { viewer } : undefined);
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

  private ruleInForce(): Promise<boolean> {
    return this.options.rule?.current() ?? Promise.resolve(false);
  }

  private remove(subscriber: Subscriber): void {
    if (subscriber.phase === 'closed') return;
    subscriber.phase = 'closed';
    this.pending.delete(subscriber);
    this.hiding.delete(subscriber);
    this.watchers.remove(subscriber, subscriber.ids, (id) => this.state.delete(id));
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

  private async timed<T>(
    kind: 'detect' | 'describe' | 'visibility',
    run: () => Promise<T>,
  ): Promise<T> {
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

  /** Reads the rows of `ids` (what POST /status/batch says, privacy applied) into `into`. */
  private async describe(ids: Set<number>, into: Map<number, UserStatus>): Promise<void> {
    await this.chunked(
      [...ids].sort((a, b) => a - b),
      async (chunk) => {
        const rows = await this.timed('describe', () => readStatuses(this.db, chunk));
        for (const row of rows) into.set(row.user_id, row);
      },
    );
  }

  private liveSubscribers(): Subscriber[] {
    const live = new Set<Subscriber>();
    for (const id of this.watchers.ids())
      for (const subscriber of this.watchers.of(id))
        if (subscriber.phase === 'live') live.add(subscriber);
    return [...live];
  }

  /**
   * The operator's rule, for each subscriber with a viewer: which of its watched ids that are
   * online (or went offline this poll, so that going offline is not told with a last seen) its
   * viewer may not see. One statement per 10,000 distinct (viewer, id) pairs.
   */
  private async hiddenFor(
    subscribers: readonly Subscriber[],
    changed: ReadonlyMap<number, boolean>,
  ): Promise<Map<Subscriber, Set<number>>> {
    const asked = (id: number, viewer: number | null) =>
      id !== viewer && (this.state.get(id) === true || changed.get(id) === true);
    const pairs = new Map<number | null, Set<number>>();
    for (const subscriber of subscribers) {
      const viewer = subscriber.viewer;
      if (viewer === undefined) continue;
      let targets = pairs.get(viewer);
      for (const id of subscriber.ids) {
        if (!asked(id, viewer)) continue;
        if (targets === undefined) pairs.set(viewer, (targets = new Set()));
        targets.add(id);
      }
    }
    const visible = await findVisibleInChunks(this.db, pairs, (run) =>
      this.timed('visibility', run),
    );
    const hidden = new Map<Subscriber, Set<number>>();
    for (const subscriber of subscribers) {
      const viewer = subscriber.viewer;
      if (viewer === undefined) continue;
      const seen = visible.get(viewer);
      let set: Set<number> | undefined;
      for (const id of subscriber.ids) {
        if (!asked(id, viewer) || seen?.has(id)) continue;
        (set ??= new Set()).add(id);
      }
      if (set) hidden.set(subscriber, set);
    }
    return hidden;
  }

  private async pollOnce(): Promise<void> {
    if (this.failed && this.options.beforeRecovery) await this.options.beforeRecovery();
    await this.poll();
    this.failed = false;
  }

  private async poll(): Promise<void> {
    const seq = ++this.pollSeq;
    const eligible = [...this.pending].filter((s) => s.liveAfterPoll < seq);
    const ids = [...this.watchers.ids()].sort((a, b) => a - b);
    const ruled = await this.ruleInForce();

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

    const described = new Map<number, UserStatus>();
    await this.describe(flipped, described);

    // Apply only now: a failed statement above leaves every state as it was.
    for (const [id, isOnline] of firstSeen) if (this.watchers.has(id)) this.state.set(id, isOnline);
    /** The shared state before this poll, for the ids whose state it changes. */
    const changed = new Map<number, boolean>();
    for (const row of described.values()) {
      if (!this.watchers.has(row.user_id)) continue;
      const before = this.state.get(row.user_id);
      this.state.set(row.user_id, row.is_online);
      if (before !== undefined && before !== row.is_online) changed.set(row.user_id, before);
    }

    const live = ruled ? this.liveSubscribers() : [...this.hiding];
    const hiddenNow = ruled
      ? await this.hiddenFor([...live, ...eligible], changed)
      : new Map<Subscriber, Set<number>>();

    const outbox = new Map<Subscriber, UserStatus[]>();
    const send = (subscriber: Subscriber, row: UserStatus) => {
      const list = outbox.get(subscriber);
      if (list) list.push(row);
      else outbox.set(subscriber, [row]);
    };
    /** What `subscriber` is to be told of `id` now, given its hidden set. */
    const rowFor = (id: number, hidden: Set<number> | undefined) =>
      hidden?.has(id) ? hiddenRow(id) : described.get(id);

    // Shared transitions, told to each watcher as its viewer may see them.
    for (const [id, wasOnline] of changed) {
      const isOnline = this.state.get(id) === true;
      for (const subscriber of this.watchers.of(id)) {
        if (subscriber.phase !== 'live') continue;
        const hidden = hiddenNow.get(subscriber);
        const shownBefore = wasOnline && !subscriber.hidden?.has(id);
        const shownNow = isOnline && !hidden?.has(id);
        if (shownBefore === shownNow) continue;
        const row = rowFor(id, hidden);
        if (row) send(subscriber, row);
      }
    }
    // Hidden or shown again with no shared transition: the rule's answer changed.
    const unhidden: Array<[Subscriber, number]> = [];
    for (const subscriber of live) {
      const hidden = hiddenNow.get(subscriber);
      for (const id of new Set([...(subscriber.hidden ?? []), ...(hidden ?? [])])) {
        if (changed.has(id) || this.state.get(id) !== true) continue;
        const hiddenBefore = subscriber.hidden?.has(id) === true;
        const hiddenAfter = hidden?.has(id) === true;
        if (hiddenBefore === hiddenAfter) continue;
        if (hiddenAfter) send(subscriber, hiddenRow(id));
        else unhidden.push([subscriber, id]);
      }
    }
    for (const subscriber of eligible) {
      if (subscriber.phase !== 'pending') continue;
      const hidden = hiddenNow.get(subscriber);
      for (const id of subscriber.ids) {
        const shownNow = this.state.get(id) === true && !hidden?.has(id);
        if (subscriber.told?.get(id) === shownNow) continue;
        if (shownNow && !described.has(id)) unhidden.push([subscriber, id]);
        else {
          const row = rowFor(id, hidden);
          if (row) send(subscriber, row);
        }
      }
      subscriber.told = undefined;
      subscriber.phase = 'live';
      this.pending.delete(subscriber);
    }
    // Users shown again to a viewer: their rows as a batch read gives them. One gone offline
    // meanwhile stays hidden for that viewer; the next poll sees its transition as hidden.
    if (unhidden.length > 0) {
      const rows = new Map<number, UserStatus>();
      await this.describe(new Set(unhidden.map(([, id]) => id)), rows);
      for (const [subscriber, id] of unhidden) {
        const row = rows.get(id);
        if (row?.is_online) send(subscriber, row);
        else {
          let hidden = hiddenNow.get(subscriber);
          if (hidden === undefined) hiddenNow.set(subscriber, (hidden = new Set()));
          hidden.add(id);
        }
      }
    }
    for (const subscriber of [...live, ...eligible]) {
      const hidden = hiddenNow.get(subscriber);
      subscriber.hidden = hidden?.size ? hidden : undefined;
      if (subscriber.hidden && subscriber.phase !== 'closed') this.hiding.add(subscriber);
      else this.hiding.delete(subscriber);
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

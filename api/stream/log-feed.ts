/**
 * Change delivery for the live stream (GET /status/stream): the online/offline transitions of
 * watched users, as the change log in PostgreSQL (`pulse_events`) records them, whichever API
 * replica, detector or sweeper wrote them.
 *
 * Design: each process tails the log and fans out in memory.
 * - Every `intervalMs` while any stream is open, one statement reads the events committed since
 *   the previous read (`readEventsSince`: by snapshot, so a transaction that commits late is never
 *   skipped). Cost: one statement per interval plus the transitions themselves, whatever the
 *   number of streams or watched ids; nothing at all without a stream.
 * - The process keeps who watches which id; each event goes to its watchers as the status row a
 *   batch read would give right after it (`statusRow`). A user who comes online and goes offline
 *   between two reads gets both events, in order.
 * - Who may see whom: the user's privacy (invisible mode, hidden last seen) applies to everyone,
 *   the operator's rule (pulse_visible_users) per viewer. A watcher is told a user it may not see
 *   as offline (hidden by the rule: no last seen either), exactly like an offline user. Each
 *   subscriber keeps the ids it was told offline while the log says online (`hidden`, sparse), so
 *   it is told a change only when what it may see changes. The rule runs only for the online
 *   transitions of a read, one statement per 10,000 (viewer, user) pairs. A change of
 *   audience with no transition (a user turning invisible, the application's
 *   pulse_visibility_changed after an unfriending) comes through pulse_visibility_changes, read
 *   by the same statement: the watchers of that user are told again what they may see.
 * - No LISTEN: the read is the ground truth and works through PgBouncer in transaction mode;
 *   NOTIFY would put a database-wide lock on every transition's commit.
 *
 * A new stream's snapshot is read with `readStatuses` after its ids are registered and after the
 * process has a cursor, so every later transition is in a read still to come. Until the first read
 * that started after its snapshot, it collects the last event per id; that read sends it the
 * difference between its snapshot and those events (what was already in the snapshot is not sent
 * again), after which it gets every event. So a stream never misses a change nor gets one that
 * contradicts what it was told.
 */
import {
  changeLogOf,
  type ChangeLogReader,
  type WatchedChange,
} from '../../lib/store/presence-log.ts';
import {
  normalizeUserIds,
  readWatchedPresence,
  statusRow,
  UNKNOWN_PRESENCE,
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
  /** Time between two reads of the log (bounds delivery latency). */
  intervalMs: number;
  /** Whether the operator's visibility rule exists (api/read/visibility-rule.ts); absent: never. */
  rule?: VisibilityRule;
  /** How the log is read: node by node on Citus (lib/store/node-change-log.ts); else through `db`. */
  log?: ChangeLogReader;
}

export interface PresenceFeedObserver {
  /** Every statement the feed runs (`detect`: one read of the log; `visibility`: the rule). */
  onStatement?(info: { kind: 'detect' | 'visibility'; seconds: number; ok: boolean }): void;
  /**
   * A read failed; the next one retries from the same cursor (nothing is lost). On Citus also a
   * node a read could not reach, while the others' changes were delivered.
   */
  onPollError?(error: unknown): void;
}

type Phase = 'snapshot' | 'pending' | 'live' | 'closed';

/** Streams given their changes before the feed lets the event loop run (and sockets flush). */
const DELIVERY_SLICE = 500;

class Subscriber {
  phase: Phase = 'snapshot';
  /** What the snapshot said, until the subscriber goes live (then dropped). */
  told: Map<number, boolean> | undefined;
  /** The last change per id since it registered, until it goes live (then dropped). */
  latest: Map<number, WatchedChange> | undefined = new Map<number, WatchedChange>();
  /** Goes live in the first read whose sequence number is above this. */
  liveAfterRead = Infinity;
  /** Ids it was told offline while the log says online (invisible, or hidden by the rule). */
  hidden: Set<number> | undefined;

  constructor(
    readonly ids: readonly number[],
    readonly deliver: Deliver,
    /** Who watches, for the rule: a user id, null (not a user), undefined (not subject to it). */
    readonly viewer: number | null | undefined,
  ) {}

  hide(userId: number, hidden: boolean): void {
    if (hidden) (this.hidden ??= new Set()).add(userId);
    else this.hidden?.delete(userId);
  }
}

/** What everyone may see of `change`: its user's privacy applied (invisible reads offline). */
const shownRow = (change: WatchedChange): UserStatus =>
  statusRow(change.userId, {
    online: change.online && !change.invisible,
    lastSeen: change.shownLastSeen,
    devices: change.devices,
  });

/** Whether the rule must be asked about `change` for `subscriber`: an online, visible-to-all user. */
const asksRule = (subscriber: Subscriber, change: WatchedChange): boolean =>
  subscriber.viewer !== undefined &&
  subscriber.viewer !== change.userId &&
  change.online &&
  !change.invisible;

export class LogPresenceFeed implements ChangeFeed {
  private readonly watchers = new WatcherIndex<Subscriber>();
  private readonly notLive = new Set<Subscriber>();
  /** The snapshot of the last read; undefined while nobody watches. */
  private cursor: string | undefined;
  private cursorTaking: Promise<void> | undefined;
  /** Bumped when the cursor is dropped: a read in flight then changes nothing. */
  private generation = 0;
  private readSeq = 0;
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private closed = false;
  private readonly log: ChangeLogReader;

  constructor(
    private readonly db: Executor,
    private readonly options: PresenceFeedOptions,
    private readonly observer: PresenceFeedObserver = {},
  ) {
    this.log = options.log ?? changeLogOf(db);
  }

  /** Distinct ids watched by the streams of this process. */
  get watchedIds(): number {
    return this.watchers.size;
  }

  async subscribe(
    userIds: readonly number[],
    deliver: Deliver,
    viewer?: number | null,
  ): Promise<FeedSubscription> {
    if (this.closed) throw new Error('the presence feed is closed');
    const subscriber = new Subscriber(normalizeUserIds(userIds), deliver, viewer);
    this.watchers.add(subscriber, subscriber.ids);
    this.notLive.add(subscriber);
    let snapshot: UserStatus[];
    try {
      await this.takeCursor();
      this.schedule(this.options.intervalMs);
      const ruled = viewer !== undefined && (await (this.options.rule?.current() ?? false));
      const found = await readWatchedPresence(this.db, userIds, ruled ? { viewer } : undefined);
      snapshot = userIds.map((id) => {
        const presence = found.get(id);
        if (presence === undefined) return statusRow(id, UNKNOWN_PRESENCE);
        subscriber.hide(id, presence.marked && (presence.invisible || !presence.visible));
        return presence.visible ? statusRow(id, presence) : hiddenRow(id);
      });
    } catch (error) {
      this.remove(subscriber);
      throw error;
    }
    if (subscriber.phase === 'snapshot') {
      subscriber.told = new Map(snapshot.map((row) => [row.user_id, row.is_online]));
      subscriber.phase = 'pending';
      // A read in flight may have started before the snapshot: only a later one may reconcile.
      subscriber.liveAfterRead = this.readSeq;
      if (subscriber.ids.length === 0) this.goLive(subscriber);
    }
    return { snapshot, close: () => this.remove(subscriber) };
  }

  /** Stops reading; waits for a read in flight. Idempotent. */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    this.timer = undefined;
    await this.running;
  }

  /** Makes sure a cursor exists: every event committed after it will be read. */
  private async takeCursor(): Promise<void> {
    while (this.cursor === undefined) {
      if (this.cursorTaking === undefined) {
        const generation = this.generation;
        this.cursorTaking = this.timed('detect', () => this.log.currentCursor())
          .then((cursor) => {
            if (generation === this.generation) this.cursor = cursor;
          })
          .finally(() => {
            this.cursorTaking = undefined;
          });
      }
      await this.cursorTaking;
    }
  }

  private goLive(subscriber: Subscriber): void {
    subscriber.phase = 'live';
    subscriber.told = undefined;
    subscriber.latest = undefined;
    this.notLive.delete(subscriber);
  }

  private remove(subscriber: Subscriber): void {
    if (subscriber.phase === 'closed') return;
    subscriber.phase = 'closed';
    this.notLive.delete(subscriber);
    this.watchers.remove(subscriber, subscriber.ids);
    if (this.watchers.size === 0 && this.notLive.size === 0) {
      // Nobody watches: stop reading, and do not read the idle time's events later.
      this.cursor = undefined;
      this.generation += 1;
    }
  }

  private schedule(delayMs: number): void {
    if (this.closed || this.timer !== undefined || this.running !== undefined) return;
    if (this.cursor === undefined) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      const started = performance.now();
      this.running = this.read()
        .catch((error: unknown) => this.observer.onPollError?.(error))
        .finally(() => {
          this.running = undefined;
          // Reads never overlap: a slow one delays the next instead of piling up.
          this.schedule(Math.max(0, this.options.intervalMs - (performance.now() - started)));
        });
    }, delayMs);
    // The feed alone never keeps a process alive (the HTTP server does).
    this.timer.unref();
  }

  private async timed<T>(kind: 'detect' | 'visibility', run: () => Promise<T>): Promise<T> {
    const started = performance.now();
    let ok = false;
    try {
      const result = await run();
      ok = true;
      return result;
    } finally {
      this.observer.onStatement?.({
        kind,
        seconds: (performance.now() - started) / 1000,
        ok,
      });
    }
  }

  private async read(): Promise<void> {
    const cursor = this.cursor;
    if (cursor === undefined) return;
    const generation = this.generation;
    const seq = ++this.readSeq;
    const { snapshot, changes, failures } = await this.timed('detect', () =>
      this.log.readFeed(cursor),
    );
    if (generation !== this.generation) return;
    this.cursor = snapshot;
    for (const failure of failures ?? []) this.observer.onPollError?.(failure);

    // Who goes live in this read: they reconcile their snapshot with the changes seen meanwhile.
    const goingLive: Subscriber[] = [];
    for (const subscriber of this.notLive) {
      if (subscriber.phase === 'pending' && subscriber.liveAfterRead < seq)
        goingLive.push(subscriber);
    }
    const watched = changes.filter((change) => this.watchers.has(change.userId));
    const visible = await this.askRule(watched, goingLive);

    const outbox = new Map<Subscriber, UserStatus[]>();
    const send = (subscriber: Subscriber, row: UserStatus) => {
      const list = outbox.get(subscriber);
      if (list) list.push(row);
      else outbox.set(subscriber, [row]);
    };
    for (const change of watched) {
      // One row object per change, shared by the watchers who may see it (serialized once).
      const shown = shownRow(change);
      for (const subscriber of this.watchers.of(change.userId)) {
        if (subscriber.phase !== 'live') {
          subscriber.latest?.set(change.userId, change);
          continue;
        }
        const told = subscriber.hidden?.has(change.userId)
          ? false
          : change.audienceOnly
            ? change.online
            : !change.online;
        const row = this.rowFor(subscriber, change, shown, visible);
        if (row.is_online !== told) send(subscriber, row);
        subscriber.hide(change.userId, change.online && !row.is_online);
      }
    }
    for (const subscriber of goingLive) {
      for (const [id, change] of subscriber.latest ?? []) {
        const row = this.rowFor(subscriber, change, shownRow(change), visible);
        if (row.is_online !== subscriber.told?.get(id)) send(subscriber, row);
        subscriber.hide(id, change.online && !row.is_online);
      }
      this.goLive(subscriber);
    }

    let delivered = 0;
    for (const [subscriber, rows] of outbox) {
      outbox.delete(subscriber);
      if (subscriber.phase !== 'live') continue;
      try {
        subscriber.deliver(rows);
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

  /** What `subscriber` is told of `change`: as everyone sees it, or hidden by the rule. */
  private rowFor(
    subscriber: Subscriber,
    change: WatchedChange,
    shown: UserStatus,
    visible: Map<number | null, Set<number>> | undefined,
  ): UserStatus {
    if (visible === undefined || !asksRule(subscriber, change)) return shown;
    return visible.get(subscriber.viewer!)?.has(change.userId) ? shown : hiddenRow(change.userId);
  }

  /**
   * The operator's rule over the (viewer, user) pairs this read needs: the online changes' live
   * watchers and the changes seen by the subscribers going live. Undefined while no rule exists.
   */
  private async askRule(
    changes: readonly WatchedChange[],
    goingLive: readonly Subscriber[],
  ): Promise<Map<number | null, Set<number>> | undefined> {
    if (!(await (this.options.rule?.current() ?? false))) return undefined;
    const pairs = new Map<number | null, Set<number>>();
    const ask = (subscriber: Subscriber, change: WatchedChange) => {
      if (!asksRule(subscriber, change)) return;
      let targets = pairs.get(subscriber.viewer!);
      if (targets === undefined) pairs.set(subscriber.viewer!, (targets = new Set()));
      targets.add(change.userId);
    };
    for (const change of changes) {
      for (const subscriber of this.watchers.of(change.userId)) {
        if (subscriber.phase === 'live') ask(subscriber, change);
      }
    }
    for (const subscriber of goingLive) {
      for (const change of subscriber.latest?.values() ?? []) ask(subscriber, change);
    }
    return findVisibleInChunks(this.db, pairs, (run) => this.timed('visibility', run));
  }
}

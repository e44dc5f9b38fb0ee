/**
 * What the live stream needs of a change feed: the change log's (log-feed.ts, the default) or the
 * polling fallback (poll-feed.ts, STREAM_CHANGE_SOURCE=poll).
 */
import {
  findVisiblePairs,
  NO_DEVICES,
  type Executor,
  type UserStatus,
} from '../../lib/store/pulse-store.ts';

/** Receives the changes of one read for one subscriber, in one call. */
export type Deliver = (changes: readonly UserStatus[]) => void;

export interface FeedSubscription {
  /** The statuses of the watched ids when the subscription started (as POST /status/batch). */
  readonly snapshot: UserStatus[];
  /** Stops deliveries; idempotent (a plain function: it may be passed around on its own). */
  readonly close: () => void;
}

export interface ChangeFeed {
  /** Distinct ids watched by the streams of this process. */
  readonly watchedIds: number;
  /**
   * Registers `userIds` (duplicates allowed, answered as given) and reads their snapshot.
   * `viewer` is who watches, for the operator's visibility rule: the caller's user id, null for a
   * caller that is not a user, undefined for one the rule does not apply to.
   */
  subscribe(
    userIds: readonly number[],
    deliver: Deliver,
    viewer?: number | null,
  ): Promise<FeedSubscription>;
  close(): Promise<void>;
}

/** What a viewer is told of a user the rule hides: an offline user Pulse knows nothing of. */
export const hiddenRow = (userId: number): UserStatus => ({
  user_id: userId,
  is_online: false,
  last_seen: null,
  devices: NO_DEVICES,
});

/** (viewer, user) pairs per statement of the operator's rule. */
const RULE_CHUNK_PAIRS = 10_000;

/**
 * The operator's rule over `pairs` (per viewer, the users asked about), one statement per
 * RULE_CHUNK_PAIRS pairs, each run through `timed`: per viewer, the users it may see.
 */
export async function findVisibleInChunks(
  db: Executor,
  pairs: ReadonlyMap<number | null, ReadonlySet<number>>,
  timed: <T>(run: () => Promise<T>) => Promise<T>,
): Promise<Map<number | null, Set<number>>> {
  const viewers: Array<number | null> = [];
  const targets: number[] = [];
  for (const [viewer, ids] of pairs) {
    for (const id of ids) {
      viewers.push(viewer);
      targets.push(id);
    }
  }
  const visible = new Map<number | null, Set<number>>();
  for (let start = 0; start < targets.length; start += RULE_CHUNK_PAIRS) {
    const end = start + RULE_CHUNK_PAIRS;
    const found = await timed(() =>
      findVisiblePairs(db, viewers.slice(start, end), targets.slice(start, end)),
    );
    for (const [viewer, ids] of found) {
      const set = visible.get(viewer);
      if (set === undefined) visible.set(viewer, ids);
      else for (const id of ids) set.add(id);
    }
  }
  return visible;
}

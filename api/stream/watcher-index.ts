/**
 * Who watches each user id, for a change feed: the streams of one process register their ids
 * here, and a change of a user goes to that user's watchers.
 *
 * Arrays, not Sets: at 10,000 streams x 100 ids this index holds a million entries, and a Set's
 * hash table costs about 3x an array's slot per entry. Removal scans one id's watchers, a few
 * dozen on average.
 */
export class WatcherIndex<Watcher> {
  private readonly byId = new Map<number, Watcher[]>();

  /** Distinct ids watched. */
  get size(): number {
    return this.byId.size;
  }

  has(userId: number): boolean {
    return this.byId.has(userId);
  }

  /** The watchers of `userId` (none: an empty list). Not to be changed by the caller. */
  of(userId: number): readonly Watcher[] {
    return this.byId.get(userId) ?? [];
  }

  ids(): IterableIterator<number> {
    return this.byId.keys();
  }

  /** `ids` without repeats. */
  add(watcher: Watcher, ids: readonly number[]): void {
    for (const id of ids) {
      const watching = this.byId.get(id);
      if (watching) watching.push(watcher);
      else this.byId.set(id, [watcher]);
    }
  }

  /** Removes `watcher` from each of `ids`; calls `onUnwatched` for the ids nobody watches now. */
  remove(watcher: Watcher, ids: readonly number[], onUnwatched?: (id: number) => void): void {
    for (const id of ids) {
      const watching = this.byId.get(id);
      if (!watching) continue;
      const at = watching.indexOf(watcher);
      if (at < 0) continue;
      // Order among one id's watchers does not matter: the last one takes the freed slot.
      const last = watching.pop()!;
      if (at < watching.length) watching[at] = last;
      if (watching.length === 0) {
        this.byId.delete(id);
        onUnwatched?.(id);
      }
    }
  }
}

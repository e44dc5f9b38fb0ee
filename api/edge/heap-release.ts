/**
 * Gives back to the operating system the heap a flood grew, once the flood is over.
 *
 * After a flood the old generation holds mostly garbage (V8 lets it grow to about 4x what is live),
 * and an idle Node process may keep it for minutes: two full collections a second apart return it,
 * the first freeing the objects, the second the pages they left empty (docs/overload.md). It needs
 * V8's `gc`, which a process has only when started with `--expose-gc` (`npm run api`, the
 * Dockerfile and `npm start` pass it); without it the API warns once and keeps its memory.
 */
import { getHeapStatistics } from 'node:v8';

export type FullCollection = () => void;

/** V8's `gc` when the process was started with --expose-gc; undefined otherwise. */
export function exposedCollector(): FullCollection | undefined {
  const exposed = (globalThis as { gc?: unknown }).gc;
  return typeof exposed === 'function' ? (exposed as FullCollection) : undefined;
}

/**
 * Runs one full collection now and a second after `gapMs`; resolves when both are done. The timer
 * does not keep the process alive: a process that is exiting skips the second collection.
 */
export function releaseHeap(collect: FullCollection, gapMs = 1_000): Promise<void> {
  collect();
  return new Promise((resolve) => {
    setTimeout(() => {
      collect();
      resolve();
    }, gapMs).unref();
  });
}

export interface HeapRelease {
  /** An overload episode began. */
  started(): void;
  /** It ended: resolves true if the heap was released. */
  ended(): Promise<boolean>;
}

/**
 * Releases the heap at the end of an episode only if the heap grew by at least `minGrowthBytes`
 * since it began: short episodes at the edge of capacity grow nothing worth two full collections
 * (each stops the event loop for about 5-15 ms).
 */
export function heapGrowthRelease(
  collect: FullCollection,
  minGrowthBytes = 16 * 1024 * 1024,
): HeapRelease {
  let heapAtStart = Infinity; // ended() without started() releases nothing
  return {
    started() {
      heapAtStart = getHeapStatistics().total_heap_size;
    },
    async ended() {
      if (getHeapStatistics().total_heap_size - heapAtStart < minGrowthBytes) return false;
      await releaseHeap(collect);
      return true;
    },
  };
}

/** What the API does when heap release is off or the runtime has no `gc`: nothing. */
export const noHeapRelease: HeapRelease = {
  started() {},
  ended: () => Promise.resolve(false),
};

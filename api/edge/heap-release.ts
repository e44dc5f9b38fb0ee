/**
 * Gives back to the operating system the heap a flood grew, once the flood is over.
 *
 * V8 sizes the old generation at up to 4x what was live at the last full collection, and under a
 * flood that is mostly requests and refusals kept alive for a second or more. Afterwards the
 * garbage stays until the next full collection, which light load may not bring for minutes, and
 * Node's V8 never runs its memory reducer for an idle process (measured: 135 MB of garbage still
 * held after 40 s idle; docs/overload.md). Two full collections a second apart return it: the
 * first frees the objects, the second releases the pages they left empty.
 *
 * Called at most once per overload episode (api/edge/overload-log.ts), and only when the episode grew
 * the heap (`heapGrowthRelease`), never on the request path: each collection stops the event loop
 * for about 5-15 ms.
 */
import { getHeapStatistics, setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

type FullCollection = () => void;

let fullCollection: FullCollection | undefined;

/**
 * V8's `gc` function. A process started with --expose-gc has it already. Otherwise it is taken
 * without the flag (every entry point and container would need it): the flag only decides whether
 * a new context gets `gc`, so it is set for one context and unset again, and no other module of
 * the process can call it.
 */
function collector(): FullCollection {
  if (fullCollection !== undefined) return fullCollection;
  const exposed = (globalThis as { gc?: unknown }).gc;
  if (typeof exposed === 'function') {
    fullCollection = exposed as FullCollection;
    return fullCollection;
  }
  setFlagsFromString('--expose-gc');
  try {
    const taken: unknown = runInNewContext('gc');
    if (typeof taken !== 'function') throw new Error('V8 did not expose gc to a new context');
    fullCollection = taken as FullCollection;
  } finally {
    setFlagsFromString('--no-expose-gc');
  }
  return fullCollection;
}

/**
 * Runs one full collection now and a second after `gapMs`; resolves when both are done. The timer
 * does not keep the process alive: a process that is exiting skips the second collection, and the
 * promise then never resolves.
 */
export function releaseHeap(gapMs = 1_000): Promise<void> {
  const collect = collector();
  collect();
  return new Promise((resolve) => {
    setTimeout(() => {
      collect();
      resolve();
    }, gapMs).unref();
  });
}

/**
 * Releases the heap at the end of an episode only if the heap grew by at least `minGrowthBytes`
 * since it began: a process at the edge of its capacity may refuse a request every few seconds,
 * and those short episodes grow nothing worth two full collections.
 */
export function heapGrowthRelease(minGrowthBytes = 16 * 1024 * 1024) {
  collector(); // at start, so a Node where this no longer works fails then, not after a flood
  let heapAtStart = Infinity; // ended() without started() releases nothing
  return {
    started(): void {
      heapAtStart = getHeapStatistics().total_heap_size;
    },
    /** Resolves true if it released the heap. */
    async ended(): Promise<boolean> {
      if (getHeapStatistics().total_heap_size - heapAtStart < minGrowthBytes) return false;
      await releaseHeap();
      return true;
    },
  };
}

/**
 * The few browser APIs the client uses, typed here so that the same source compiles for browsers
 * and for Node (whose types have no DOM); each is feature-detected at run time.
 */

export interface LockManagerLike {
  request(
    name: string,
    options: { signal?: AbortSignal },
    callback: () => Promise<void>,
  ): Promise<void>;
}

export interface ChannelLike {
  postMessage(message: unknown): void;
  close(): void;
  onmessage: ((event: { data: unknown }) => void) | null;
}

export interface PageLifecycleTarget {
  addEventListener(type: 'pagehide' | 'pageshow', listener: (event: PageEventLike) => void): void;
  removeEventListener(
    type: 'pagehide' | 'pageshow',
    listener: (event: PageEventLike) => void,
  ): void;
}

export interface PageEventLike {
  /** pagehide: the page goes to the back/forward cache; pageshow: it comes back from it. */
  persisted?: boolean;
}

interface BrowserGlobals {
  navigator?: { locks?: LockManagerLike };
  BroadcastChannel?: new (name: string) => ChannelLike;
  addEventListener?: unknown;
  removeEventListener?: unknown;
  document?: unknown;
}

const globals = globalThis as unknown as BrowserGlobals;

/** Web Locks and BroadcastChannel in a page (not Node, where each client is on its own). */
export function tabCoordination():
  { locks: LockManagerLike; openChannel: (name: string) => ChannelLike } | undefined {
  const locks = globals.navigator?.locks;
  const Channel = globals.BroadcastChannel;
  if (!locks || !Channel || globals.document === undefined) return undefined;
  return { locks, openChannel: (name) => new Channel(name) };
}

/** The page, when there is one: pagehide/pageshow tell when it goes away and comes back. */
export function pageLifecycle(): PageLifecycleTarget | undefined {
  if (globals.document === undefined || typeof globals.addEventListener !== 'function') {
    return undefined;
  }
  const page: unknown = globalThis;
  return page as PageLifecycleTarget;
}

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

interface NavigateEventLike {
  destination: { url: string };
  hashChange?: boolean;
  downloadRequest?: string | null;
}

interface NavigationLike {
  addEventListener(type: 'navigate', listener: (event: NavigateEventLike) => void): void;
  addEventListener(type: 'navigatesuccess' | 'navigateerror', listener: () => void): void;
}

interface BrowserGlobals {
  navigator?: { locks?: LockManagerLike };
  navigation?: NavigationLike;
  location?: { origin: string };
  BroadcastChannel?: new (name: string) => ChannelLike;
  addEventListener?: unknown;
  removeEventListener?: unknown;
  document?: unknown;
}

const globals = globalThis as unknown as BrowserGlobals;

interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
}

/** Where the browser's device id is kept: shared by every tab of the origin. */
const DEVICE_ID_KEY = 'pulse-device-id';
const DEVICE_ID_PATTERN = /^[A-Za-z0-9._:-]{1,64}$/;

/** A random id of `length` base-36 characters (getRandomValues: also in non-secure contexts). */
function randomId(length = 16): string {
  const bytes = new Uint8Array(length);
  globalThis.crypto.getRandomValues(bytes);
  return Array.from(bytes, (byte) => (byte % 36).toString(36)).join('');
}

/** This runtime's device when storage says nothing: one per page load, or per Node process. */
let fallbackDeviceId: string | undefined;

/**
 * The device id of this browser (localStorage, so every tab of the origin says the same) or, in
 * Node and when storage is unavailable (blocked, a sandboxed frame), one per page or process.
 */
export function defaultDeviceId(): string {
  if (globals.document !== undefined) {
    try {
      const storage = (globalThis as unknown as { localStorage?: StorageLike }).localStorage;
      if (storage) {
        const kept = storage.getItem(DEVICE_ID_KEY);
        if (kept !== null && DEVICE_ID_PATTERN.test(kept)) return kept;
        const made = `b-${randomId()}`;
        storage.setItem(DEVICE_ID_KEY, made);
        if (storage.getItem(DEVICE_ID_KEY) === made) return made;
      }
    } catch {
      // Storage is refused (privacy settings, an opaque origin): this page is its own device.
    }
    return (fallbackDeviceId ??= `p-${randomId()}`);
  }
  return (fallbackDeviceId ??= `n-${randomId()}`);
}

/** `web` in a page, `other` elsewhere (Node). */
export function defaultDeviceKind(): 'web' | 'other' {
  return globals.document === undefined ? 'other' : 'web';
}

/** Whether `id` is a device id the server accepts. */
export function isDeviceId(id: unknown): id is string {
  return typeof id === 'string' && DEVICE_ID_PATTERN.test(id);
}

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

/**
 * Whether the page is being replaced by another page of the same origin (a reload from the page,
 * a link, a form): that is no departure, so pagehide sends no offline. From the Navigation API
 * (Chromium); a reload from the browser's own button or a typed address fires no `navigate`, and
 * then pagehide cannot tell a reload from a close.
 */
let toSameOrigin = false;
const navigation = globals.document === undefined ? undefined : globals.navigation;
navigation?.addEventListener('navigate', (event) => {
  if (event.hashChange === true || (event.downloadRequest ?? null) !== null) return;
  try {
    toSameOrigin = new URL(event.destination.url).origin === globals.location?.origin;
  } catch {
    toSameOrigin = false;
  }
});
// A navigation that stayed in this document, or was stopped, leaves the page where it was.
navigation?.addEventListener('navigatesuccess', () => (toSameOrigin = false));
navigation?.addEventListener('navigateerror', () => (toSameOrigin = false));

/** Whether the page now going away is being replaced by a page of the same origin. */
export function leavingForSameOrigin(): boolean {
  return toSameOrigin;
}

/** Back from the back/forward cache: whatever navigation hid the page is over. */
export function resetLeaving(): void {
  toSameOrigin = false;
}

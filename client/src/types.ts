/** What kind of client a device is (the server keeps one of these per device). */
export type DeviceKind = 'web' | 'mobile' | 'desktop' | 'other';

/** Where a user is online: their fresh devices and the kinds those named (count 0 offline). */
export interface DeviceSummary {
  count: number;
  kinds: DeviceKind[];
}

/** One transition of a watched user, as the stream's `change` event carries it. */
export interface PresenceChange {
  user_id: number;
  is_online: boolean;
  /** Where the user is online, as of the change (absent from a server without devices). */
  devices?: DeviceSummary;
}

/** What the client is doing about the connection, for a status line in a UI. */
export type ConnectionStatus =
  /** Not started and watching nothing, or stopped. */
  | 'idle'
  /** Opening the stream (first time or after a failure). */
  | 'connecting'
  /** The stream is open and its snapshot arrived: presence is held by the server. */
  | 'live'
  /** Waiting before the next attempt; heartbeats keep the user online meanwhile. */
  | 'backoff'
  /** The server has no stream: heartbeats hold presence and watched users are polled. */
  | 'polling'
  /** Another tab of this browser holds the stream for this one. */
  | 'shared';

/** A failure the client could not hide (it keeps retrying where retrying makes sense). */
export class PulseError extends Error {
  constructor(
    /**
     * The API's error code (`invalid_token`, `too_many_ids`, ...), `network`, or
     * `token_unavailable` (getToken failed).
     */
    readonly code: string,
    message: string,
    /** The HTTP status, when there was an answer. */
    readonly status?: number,
  ) {
    super(message);
    this.name = 'PulseError';
  }
}

export interface PulseClientOptions {
  /** The API's base URL, for example `https://pulse.example.com` (no trailing path needed). */
  url: string;
  /** A bearer token (AUTH_MODE=jwt). */
  token?: string;
  /** Called for a token before connecting, and again after a 401 (the token expired). */
  getToken?: () => string | Promise<string>;
  /**
   * The user whose presence start() holds. Needed with AUTH_MODE=none; with tokens the token's
   * `sub` decides, and userId only keeps two users of one browser apart.
   */
  userId?: number;
  /**
   * This device's id (1-64 of A-Z a-z 0-9 . _ : -): the user is online while any of their devices
   * is, and stop({ offline: true }) ends only this one. Default: in a browser, one id per browser
   * profile kept in localStorage (shared by every tab of the origin; a random one per page when
   * storage is unavailable); in Node, one random id per process.
   */
  deviceId?: string;
  /** What kind of client this is: `web` in a browser, `other` in Node by default. */
  deviceKind?: DeviceKind;
  /**
   * The online threshold that paces the fallback heartbeat loop (half of it, with jitter). Unset:
   * the threshold the server announces on its heartbeat answers (Pulse-Online-Threshold-Seconds),
   * 20 until the first answer.
   */
  onlineThresholdSeconds?: number;
  /** Reconnect windows: full jitter from initialMs, doubling up to maxMs. */
  backoff?: { initialMs?: number; maxMs?: number };
  /**
   * Browsers: share one stream among the tabs of this origin (Web Locks + BroadcastChannel).
   * Default true where both exist.
   */
  shareAcrossTabs?: boolean;
  /** Failures the client could not hide (it keeps retrying where that makes sense). */
  onError?: (error: PulseError) => void;
  /** The connection's state, for a status line. */
  onStatus?: (status: ConnectionStatus) => void;
  /** The fetch to use (tests, or a runtime without a global fetch). */
  fetch?: typeof fetch;
}

export interface StopOptions {
  /**
   * Tell the server this device is offline now: the user goes offline for watchers in about a
   * second instead of a threshold later, unless another device of theirs is still online. In a
   * browser, only when no other tab of this user is still open.
   */
  offline?: boolean;
}

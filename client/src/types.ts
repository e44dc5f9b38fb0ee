/** One transition of a watched user, as the stream's `change` event carries it. */
export interface PresenceChange {
  user_id: number;
  is_online: boolean;
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
   * Tell the server this user is offline now, so watchers see it in about a second instead of a
   * threshold later. In a browser, only when no other tab of this user is still open.
   */
  offline?: boolean;
}

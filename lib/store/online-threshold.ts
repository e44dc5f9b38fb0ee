/**
 * The online threshold in force (pulse_settings.online_threshold_seconds), as a process keeps a
 * copy of it: for the pace of held presence (api/stream/held-presence.ts) and for the device
 * bookkeeping of a heartbeat (lib/store/pulse-store.ts). The online rule itself never uses a copy:
 * its statements read the settings row live.
 */

/** pulse_settings.online_threshold_seconds as migration 0003 creates it. */
export const DEFAULT_ONLINE_THRESHOLD_SECONDS = 20;

/** The online threshold in force, refreshed from pulse_settings. */
export interface OnlineThreshold {
  /** The last value read (or the one at start); asks for a fresh read when it is older than 1 s. */
  readonly seconds: number;
  /** The value, read again first when the last read is older than 1 s. */
  current(): Promise<number>;
}

/**
 * Reads the threshold with `read` at most once per `refreshMs` (concurrent callers share one
 * read). A failed read, or a missing settings row (`read` rejects), keeps the last value.
 */
export class LiveOnlineThreshold implements OnlineThreshold {
  private value: number;
  private readAt = -Infinity;
  private reading: Promise<number> | undefined;

  constructor(
    private readonly read: () => Promise<number>,
    initialSeconds: number,
    private readonly refreshMs = 1_000,
  ) {
    this.value = initialSeconds;
  }

  get seconds(): number {
    void this.current();
    return this.value;
  }

  current(): Promise<number> {
    if (this.reading !== undefined) return this.reading;
    const now = performance.now();
    if (now - this.readAt < this.refreshMs) return Promise.resolve(this.value);
    this.readAt = now;
    // A failed read keeps the last value: the database's outage log reports the failure.
    this.reading = this.read()
      .then(
        (seconds) => (this.value = seconds),
        () => this.value,
      )
      .finally(() => (this.reading = undefined));
    return this.reading;
  }
}

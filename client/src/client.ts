import { Credentials, PulseApi } from './api.ts';
import { DEFAULT_BACKOFF } from './backoff.ts';
import type { ConnectionHandlers, ConnectionOptions } from './connection.ts';
import { defaultDeviceId, defaultDeviceKind, isDeviceId, tabCoordination } from './platform.ts';
import { SharedTransport } from './tabs.ts';
import { DirectTransport, type Transport } from './transport.ts';
import type {
  ConnectionStatus,
  DeviceKind,
  DeviceSummary,
  PresenceChange,
  PulseClientOptions,
  PulseError,
  StopOptions,
} from './types.ts';

type Listener = (change: PresenceChange) => void;

const DEVICE_KINDS: readonly DeviceKind[] = ['web', 'mobile', 'desktop', 'other'];

/**
 * Presence for one user, and the live state of the users it watches.
 *
 *   const pulse = new PulseClient({ url, userId: 7 });
 *   pulse.start();
 *   const unwatch = pulse.watch([8, 9], ({ user_id, is_online }) => render(user_id, is_online));
 *   pulse.isOnline(8);
 *   await pulse.stop({ offline: true });
 */
export class PulseClient {
  private readonly transport: Transport;
  private readonly listeners = new Map<number, Set<Listener>>();
  private readonly states = new Map<number, boolean>();
  private holding = false;
  private stopped = false;
  private statusValue: ConnectionStatus = 'idle';
  private readonly userId: number | undefined;
  private readonly hasToken: boolean;
  private readonly summaries = new Map<number, DeviceSummary>();
  private readonly api: PulseApi;

  constructor(options: PulseClientOptions) {
    if (typeof options.url !== 'string' || options.url === '') {
      throw new TypeError('PulseClient: url is required (the API base URL)');
    }
    if (
      options.userId !== undefined &&
      !(Number.isSafeInteger(options.userId) && options.userId >= 1)
    ) {
      throw new TypeError('PulseClient: userId must be a whole number from 1');
    }
    if (options.deviceId !== undefined && !isDeviceId(options.deviceId)) {
      throw new TypeError('PulseClient: deviceId must be 1 to 64 of A-Z a-z 0-9 . _ : -');
    }
    if (
      options.deviceKind !== undefined &&
      !(DEVICE_KINDS as readonly string[]).includes(options.deviceKind)
    ) {
      throw new TypeError(`PulseClient: deviceKind must be one of ${DEVICE_KINDS.join(', ')}`);
    }
    this.userId = options.userId;
    this.hasToken = options.token !== undefined || options.getToken !== undefined;
    const fetchImpl = options.fetch ?? globalThis.fetch.bind(globalThis);
    const api = new PulseApi(
      options.url,
      new Credentials(options.token, options.getToken),
      fetchImpl,
      {
        id: options.deviceId ?? defaultDeviceId(),
        kind: options.deviceKind ?? defaultDeviceKind(),
      },
    );
    this.deviceId = api.device.id;
    this.api = api;
    const connectionOptions: ConnectionOptions = {
      api,
      userId: options.userId,
      onlineThresholdSeconds: options.onlineThresholdSeconds,
      backoff: { ...DEFAULT_BACKOFF, ...options.backoff },
      fetch: fetchImpl,
    };
    const handlers: ConnectionHandlers = {
      onSnapshot: (states) => {
        for (const state of states) this.apply(state);
      },
      onChange: (change) => this.apply(change),
      onStatus: (status) => {
        this.statusValue = status;
        options.onStatus?.(status);
      },
      onError: (error: PulseError) => options.onError?.(error),
    };
    const tabs = options.shareAcrossTabs === false ? undefined : tabCoordination();
    this.transport = tabs
      ? new SharedTransport(
          // The tabs of one device share its stream; a client given another device id is another device.
          `${api.base}|${options.userId ?? 'token'}|${api.device.id}`,
          tabs.locks,
          tabs.openChannel,
          connectionOptions,
          handlers,
        )
      : new DirectTransport(connectionOptions, handlers);
  }

  /** The device id this client sends (see PulseClientOptions.deviceId). */
  readonly deviceId: string;

  /** What the connection is doing now. */
  get status(): ConnectionStatus {
    return this.statusValue;
  }

  /** Holds this user's presence until stop(). */
  start(): void {
    this.assertRunning('start');
    if (this.userId === undefined && !this.hasToken) {
      throw new TypeError(
        'PulseClient.start: give userId (AUTH_MODE=none) or a token/getToken whose sub is the user',
      );
    }
    this.holding = true;
    this.push();
  }

  /**
   * Follows these users: `onChange` gets each one's state once it is known and every transition
   * after that. Returns the function that stops watching them.
   */
  watch(userIds: readonly number[], onChange: (change: PresenceChange) => void): () => void {
    this.assertRunning('watch');
    for (const id of userIds) {
      if (!(Number.isSafeInteger(id) && id >= 1)) {
        throw new TypeError(`PulseClient.watch: ${String(id)} is not a user id`);
      }
    }
    const ids = [...new Set(userIds)];
    for (const id of ids) {
      let set = this.listeners.get(id);
      if (!set) this.listeners.set(id, (set = new Set()));
      set.add(onChange);
    }
    this.push();
    // A state already known is delivered now, as the first "change" of this watcher.
    queueMicrotask(() => {
      for (const id of ids) {
        const online = this.states.get(id);
        if (online !== undefined && this.listeners.get(id)?.has(onChange)) {
          const devices = this.summaries.get(id);
          onChange(
            devices === undefined
              ? { user_id: id, is_online: online }
              : { user_id: id, is_online: online, devices },
          );
        }
      }
    });
    let done = false;
    return () => {
      if (done) return;
      done = true;
      for (const id of ids) {
        const set = this.listeners.get(id);
        set?.delete(onChange);
        if (set?.size === 0) this.listeners.delete(id);
      }
      if (!this.stopped) this.push();
    };
  }

  /** The last known state of a watched user; undefined before the server told, or if unwatched. */
  isOnline(userId: number): boolean | undefined {
    return this.listeners.has(userId) ? this.states.get(userId) : undefined;
  }

  /**
   * Where a watched user was online at their last transition (devices and kinds); undefined before
   * the server told, or from a server without devices. A device joining or leaving while the user
   * stays online is no transition: read() asks the server for the current summaries.
   */
  devicesOf(userId: number): DeviceSummary | undefined {
    return this.listeners.has(userId) ? this.summaries.get(userId) : undefined;
  }

  /** The users' current statuses, devices included (one POST /status/batch). */
  async read(userIds: readonly number[]): Promise<PresenceChange[]> {
    this.assertRunning('read');
    return this.api.batch(userIds);
  }

  /**
   * Stops holding presence and watching. With `{ offline: true }` the server marks the user
   * offline now (unless another tab of this browser still holds them).
   */
  async stop(options: StopOptions = {}): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    await this.transport.close(options.offline === true);
  }

  private assertRunning(call: string): void {
    if (this.stopped) throw new Error(`PulseClient.${call}: this client was stopped`);
  }

  private push(): void {
    this.transport.update({ hold: this.holding, watch: new Set(this.listeners.keys()) });
  }

  /**
   * Records every state the stream carries (it may cover ids no longer watched: removing ids does
   * not reconnect), so watching an id again starts from a known state; calls the listeners of
   * watched ids on real transitions only.
   */
  private apply({ user_id, is_online, devices }: PresenceChange): void {
    if (devices !== undefined) this.summaries.set(user_id, devices);
    if (this.states.get(user_id) === is_online) return;
    this.states.set(user_id, is_online);
    const listeners = this.listeners.get(user_id);
    if (!listeners) return;
    const change = devices === undefined ? { user_id, is_online } : { user_id, is_online, devices };
    for (const listener of [...listeners]) listener(change);
  }
}

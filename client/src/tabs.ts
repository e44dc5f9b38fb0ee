/**
 * One stream per browser, not per tab. Over HTTP/1.1 a browser allows 6 connections per origin
 * across all its tabs: a stream per tab would block the whole site at the seventh tab.
 *
 * The tabs of one origin that hold the same user form a group (a BroadcastChannel). A Web Lock
 * elects the leader: the tab holding the lock opens the only stream, watching the union of what
 * every tab watches and holding presence while any tab wants it, and re-broadcasts the snapshot
 * and changes. When the leader closes, the browser releases its lock and the next tab takes over;
 * the user stays online meanwhile (the last heartbeat is younger than the threshold).
 *
 * Every tab knows its peers (hello / member / bye messages), so on pagehide it can tell whether it
 * is the last tab holding the user: only then does it send explicit offline (fetch keepalive), so
 * watchers see the user go in about a second; closing one of several tabs changes nothing. A tab
 * that crashes never says bye: the others then count it as present, and the user goes offline by
 * the threshold instead, which is the server's rule anyway.
 */
import { PresenceConnection, type ConnectionOptions } from './connection.ts';
import type { ChannelLike, LockManagerLike, PageEventLike } from './platform.ts';
import { leavingForSameOrigin, pageLifecycle, resetLeaving } from './platform.ts';
import {
  offlineUserId,
  type ConnectionHandlers,
  type Desired,
  type Transport,
} from './transport.ts';
import type { PresenceChange } from './types.ts';

type Message =
  | { type: 'hello' | 'member'; from: string; hold: boolean; watch: number[] }
  | { type: 'bye'; from: string }
  | { type: 'snapshot'; states: PresenceChange[] }
  | { type: 'change'; change: PresenceChange };

interface Peer {
  hold: boolean;
  watch: number[];
}

function isMessage(value: unknown): value is Message {
  const type = (value as { type?: unknown } | null)?.type;
  return (
    typeof type === 'string' && ['hello', 'member', 'bye', 'snapshot', 'change'].includes(type)
  );
}

export class SharedTransport implements Transport {
  private readonly id = Math.random().toString(36).slice(2) + Date.now().toString(36);
  private readonly peers = new Map<string, Peer>();
  private desired: Desired = { hold: false, watch: new Set() };
  private channel: ChannelLike | undefined;
  private leaderConnection: PresenceConnection | undefined;
  private releaseLeadership: (() => void) | undefined;
  private lockRequest: AbortController | undefined;
  private leadership: Promise<void> | undefined;
  /** Everything the leader knows, so a tab that joins late sees the current state at once. */
  private readonly known = new Map<number, boolean>();
  private readonly page = pageLifecycle();

  constructor(
    private readonly groupKey: string,
    private readonly locks: LockManagerLike,
    private readonly openChannel: (name: string) => ChannelLike,
    private readonly options: ConnectionOptions,
    private readonly handlers: ConnectionHandlers,
  ) {
    this.page?.addEventListener('pagehide', this.onPageHide);
    this.page?.addEventListener('pageshow', this.onPageShow);
    this.join();
  }

  update(desired: Desired): void {
    this.desired = { hold: desired.hold, watch: new Set(desired.watch) };
    this.post({ type: 'member', from: this.id, ...this.ownState() });
    this.leaderConnection?.update(this.union());
  }

  async close(offline: boolean): Promise<void> {
    this.page?.removeEventListener('pagehide', this.onPageHide);
    this.page?.removeEventListener('pageshow', this.onPageShow);
    const held = this.desired.hold;
    const last = !this.otherTabHolds();
    await this.leave();
    const userId = offlineUserId(this.options.api, this.options.userId);
    if (offline && held && last && userId !== undefined) await this.options.api.offline(userId);
  }

  /** Whether this tab is the one holding the stream (for tests and status lines). */
  get isLeader(): boolean {
    return this.leaderConnection !== undefined;
  }

  private ownState(): Peer {
    return { hold: this.desired.hold, watch: [...this.desired.watch] };
  }

  private otherTabHolds(): boolean {
    return [...this.peers.values()].some((peer) => peer.hold);
  }

  private union(): Desired {
    const watch = new Set(this.desired.watch);
    let hold = this.desired.hold;
    for (const peer of this.peers.values()) {
      hold ||= peer.hold;
      for (const id of peer.watch) watch.add(id);
    }
    return { hold, watch };
  }

  private post(message: Message): void {
    this.channel?.postMessage(message);
  }

  private join(): void {
    this.channel = this.openChannel(`pulse:${this.groupKey}`);
    this.channel.onmessage = (event) => {
      if (isMessage(event.data)) this.receive(event.data);
    };
    this.post({ type: 'hello', from: this.id, ...this.ownState() });
    const request = new AbortController();
    this.lockRequest = request;
    this.leadership = this.locks
      .request(`pulse-leader:${this.groupKey}`, { signal: request.signal }, () => this.lead())
      .catch(() => {
        // Aborted: this tab left before it became the leader.
      });
  }

  /** Runs while this tab holds the lock; the lock goes when the returned promise settles. */
  private async lead(): Promise<void> {
    if (this.channel === undefined) return;
    const connection = new PresenceConnection(this.options, {
      onSnapshot: (states) => {
        for (const s of states) this.known.set(s.user_id, s.is_online);
        this.post({ type: 'snapshot', states });
        this.handlers.onSnapshot(states);
      },
      onChange: (change) => {
        this.known.set(change.user_id, change.is_online);
        this.post({ type: 'change', change });
        this.handlers.onChange(change);
      },
      onStatus: (status) => this.handlers.onStatus(status),
      onError: (error) => this.handlers.onError(error),
    });
    this.leaderConnection = connection;
    connection.update(this.union());
    await new Promise<void>((resolve) => {
      this.releaseLeadership = resolve;
    });
  }

  private receive(message: Message): void {
    switch (message.type) {
      case 'hello':
      case 'member': {
        this.peers.set(message.from, { hold: message.hold, watch: message.watch });
        if (message.type === 'hello') {
          this.post({ type: 'member', from: this.id, ...this.ownState() });
          if (this.leaderConnection && this.known.size > 0) {
            this.post({
              type: 'snapshot',
              states: [...this.known].map(([user_id, is_online]) => ({ user_id, is_online })),
            });
          }
        }
        this.leaderConnection?.update(this.union());
        break;
      }
      case 'bye':
        this.peers.delete(message.from);
        this.leaderConnection?.update(this.union());
        break;
      case 'snapshot':
        if (!this.leaderConnection) {
          this.handlers.onStatus('shared');
          this.handlers.onSnapshot(message.states);
        }
        break;
      case 'change':
        if (!this.leaderConnection) this.handlers.onChange(message.change);
        break;
    }
  }

  /** Says bye, drops the stream if this tab had it, and lets another tab lead. */
  private async leave(): Promise<void> {
    this.post({ type: 'bye', from: this.id });
    this.channel?.close();
    this.channel = undefined;
    this.peers.clear();
    this.lockRequest?.abort();
    const connection = this.leaderConnection;
    this.leaderConnection = undefined;
    await connection?.close();
    this.releaseLeadership?.();
    this.releaseLeadership = undefined;
    await this.leadership;
    this.handlers.onStatus('idle');
  }

  private readonly onPageHide = (): void => {
    const last = !this.otherTabHolds();
    // The stream goes first, so the server stops beating before the offline request lands.
    this.leaderConnection?.abortNow();
    const userId = offlineUserId(this.options.api, this.options.userId);
    if (this.desired.hold && last && userId !== undefined && !leavingForSameOrigin()) {
      this.options.api.offlineOnUnload(userId);
    }
    void this.leave();
  };

  private readonly onPageShow = (event: PageEventLike): void => {
    if (!event.persisted) return;
    resetLeaving();
    this.join();
  };
}

/** How a PulseClient reaches the server: its own connection, or one shared by the tabs. */
import type { PulseApi } from './api.ts';
import { subjectOf } from './api.ts';
import {
  PresenceConnection,
  type ConnectionHandlers,
  type ConnectionOptions,
  type Desired,
} from './connection.ts';
import {
  leavingForSameOrigin,
  pageLifecycle,
  resetLeaving,
  type PageEventLike,
} from './platform.ts';

export type { ConnectionHandlers, Desired };

export interface Transport {
  update(desired: Desired): void;
  /** Ends the connection; with `offline`, tells the server when no other tab holds the user. */
  close(offline: boolean): Promise<void>;
}

/** The user an offline request is for. */
export function offlineUserId(api: PulseApi, userId: number | undefined): number | undefined {
  return userId ?? subjectOf(api.credentials.current);
}

/**
 * One connection for this client alone: Node, or a browser without Web Locks/BroadcastChannel,
 * or shareAcrossTabs: false. In a page it still sends offline on pagehide.
 */
export class DirectTransport implements Transport {
  private connection: PresenceConnection;
  private desired: Desired = { hold: false, watch: new Set() };
  private readonly page = pageLifecycle();

  constructor(
    private readonly options: ConnectionOptions,
    private readonly handlers: ConnectionHandlers,
  ) {
    this.connection = new PresenceConnection(options, handlers);
    this.page?.addEventListener('pagehide', this.onPageHide);
    this.page?.addEventListener('pageshow', this.onPageShow);
  }

  update(desired: Desired): void {
    this.desired = desired;
    this.connection.update(desired);
  }

  async close(offline: boolean): Promise<void> {
    this.page?.removeEventListener('pagehide', this.onPageHide);
    this.page?.removeEventListener('pageshow', this.onPageShow);
    const held = this.desired.hold;
    await this.connection.close();
    const userId = offlineUserId(this.options.api, this.options.userId);
    if (offline && held && userId !== undefined) await this.options.api.offline(userId);
  }

  private readonly onPageHide = (): void => {
    this.connection.abortNow();
    const userId = offlineUserId(this.options.api, this.options.userId);
    if (this.desired.hold && userId !== undefined && !leavingForSameOrigin()) {
      this.options.api.offlineOnUnload(userId);
    }
  };

  private readonly onPageShow = (event: PageEventLike): void => {
    if (!event.persisted) return;
    resetLeaving();
    // Back from the back/forward cache: the old connection was dropped on pagehide.
    this.connection = new PresenceConnection(this.options, this.handlers);
    this.connection.update(this.desired);
  };
}

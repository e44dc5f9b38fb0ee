/**
 * One EndpointDeliverer per enabled endpoint: the list is read again every `refreshMs`, so an
 * endpoint added, disabled or deleted with SQL is picked up without a restart.
 */
import type { Executor } from '../store/pulse-store.ts';
import { listEnabledEndpoints } from '../store/webhook-store.ts';
import type { Send } from './delivery.ts';
import {
  EndpointDeliverer,
  type DelivererObserver,
  type DelivererOptions,
} from './endpoint-deliverer.ts';

export interface FleetOptions extends DelivererOptions {
  refreshMs: number;
  /** The endpoint list could not be read (the database, most often). */
  onRefreshError?: (error: unknown) => void;
}

export class WebhookFleet {
  private readonly deliverers = new Map<number, EndpointDeliverer>();
  private timer: NodeJS.Timeout | undefined;
  private refreshing: Promise<void> | undefined;
  private stopped = true;

  constructor(
    private readonly db: Executor,
    private readonly send: Send,
    private readonly options: FleetOptions,
    private readonly observer: DelivererObserver = {},
  ) {}

  /** Endpoints with a running deliverer (whether or not it holds the lease). */
  get endpointIds(): number[] {
    return [...this.deliverers.keys()];
  }

  deliverer(endpointId: number): EndpointDeliverer | undefined {
    return this.deliverers.get(endpointId);
  }

  start(): void {
    this.stopped = false;
    void this.refresh();
  }

  /** Reads the endpoint list now and starts or stops deliverers to match. */
  refresh(): Promise<void> {
    this.refreshing ??= this.sync().finally(() => {
      this.refreshing = undefined;
      if (!this.stopped) {
        clearTimeout(this.timer);
        this.timer = setTimeout(() => void this.refresh(), this.options.refreshMs);
      }
    });
    return this.refreshing;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.refreshing;
    await Promise.all([...this.deliverers.values()].map((d) => d.stop()));
    this.deliverers.clear();
  }

  private async sync(): Promise<void> {
    let endpoints: Array<{ id: number; name: string }>;
    try {
      endpoints = await listEnabledEndpoints(this.db);
    } catch (error) {
      this.options.onRefreshError?.(error);
      return;
    }
    if (this.stopped) return;
    const wanted = new Set(endpoints.map((e) => e.id));
    for (const [id, deliverer] of this.deliverers) {
      if (wanted.has(id)) continue;
      this.deliverers.delete(id);
      await deliverer.stop();
    }
    for (const endpoint of endpoints) {
      if (this.deliverers.has(endpoint.id)) continue;
      const deliverer = new EndpointDeliverer(
        this.db,
        endpoint,
        this.send,
        this.options,
        this.observer,
      );
      this.deliverers.set(endpoint.id, deliverer);
      deliverer.start();
    }
  }
}

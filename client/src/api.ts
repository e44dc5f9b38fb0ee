/** The API's plain requests (heartbeat, offline, batch) and the caller's credentials. */
import { PulseError, type DeviceKind, type DeviceSummary } from './types.ts';

/** The device this client speaks for: sent with heartbeats, the held stream and offline. */
export interface ClientDevice {
  id: string;
  kind: DeviceKind;
}

/** How long the server waits before an offline sent by a page going away takes effect. */
export const UNLOAD_OFFLINE_GRACE_MS = 1_500;

/** The bearer token: given once, or fetched through getToken and fetched again after a 401. */
export class Credentials {
  private cached: string | undefined;

  constructor(
    token: string | undefined,
    private readonly getToken: (() => string | Promise<string>) | undefined,
  ) {
    this.cached = token;
  }

  /** Whether a 401 is worth one more try with a fresh token. */
  get canRefresh(): boolean {
    return this.getToken !== undefined;
  }

  /** The last token seen, without asking for one (page unload cannot wait for a promise). */
  get current(): string | undefined {
    return this.cached;
  }

  /** Rejects with a PulseError `token_unavailable` when getToken fails. */
  async token(): Promise<string | undefined> {
    if (this.cached === undefined && this.getToken) {
      try {
        this.cached = await this.getToken();
      } catch (error) {
        const reason = error instanceof Error ? error.message : String(error);
        throw new PulseError('token_unavailable', `getToken failed: ${reason}`);
      }
    }
    return this.cached;
  }

  /** After a 401: the next token() asks getToken again. */
  invalidate(): void {
    if (this.getToken) this.cached = undefined;
  }
}

/** The user a JWT names in `sub`, read without verifying (the server verifies). */
export function subjectOf(token: string | undefined): number | undefined {
  const payload = token?.split('.')[1];
  if (!payload) return undefined;
  try {
    const json = atob(payload.replaceAll('-', '+').replaceAll('_', '/'));
    const sub = (JSON.parse(json) as { sub?: unknown }).sub;
    return typeof sub === 'string' && /^[1-9]\d{0,15}$/.test(sub) ? Number(sub) : undefined;
  } catch {
    return undefined;
  }
}

export function headersFor(token: string | undefined, json: boolean): Record<string, string> {
  const headers: Record<string, string> = {};
  if (json) headers['content-type'] = 'application/json';
  if (token !== undefined) headers.authorization = `Bearer ${token}`;
  return headers;
}

/** The API's JSON error as a PulseError (or a generic one for a body that is not ours). */
export async function errorFrom(response: Response): Promise<PulseError> {
  let code = `http_${response.status}`;
  let message = `HTTP ${response.status}`;
  try {
    const body = (await response.json()) as { error?: { code?: unknown; message?: unknown } };
    if (typeof body.error?.code === 'string') code = body.error.code;
    if (typeof body.error?.message === 'string') message = body.error.message;
  } catch {
    // Not JSON (a proxy's page): the status says enough.
  }
  return new PulseError(code, message, response.status);
}

export class PulseApi {
  readonly base: string;

  constructor(
    url: string,
    readonly credentials: Credentials,
    private readonly fetchImpl: typeof fetch,
    readonly device: ClientDevice,
  ) {
    this.base = url.replace(/\/+$/, '');
  }

  /** A request with the current token, tried once more with a fresh one after a 401. */
  async request(path: string, init: RequestInit & { json?: unknown }): Promise<Response> {
    for (let attempt = 0; ; attempt += 1) {
      const token = await this.credentials.token();
      const { json, ...rest } = init;
      const response = await this.fetchImpl(this.base + path, {
        ...rest,
        headers: { ...headersFor(token, json !== undefined), ...(init.headers ?? {}) },
        ...(json === undefined ? {} : { body: JSON.stringify(json) }),
      });
      if (response.status === 401 && attempt === 0 && this.credentials.canRefresh) {
        await response.body?.cancel();
        this.credentials.invalidate();
        continue;
      }
      return response;
    }
  }

  private async expectOk(response: Response): Promise<void> {
    if (!response.ok) throw await errorFrom(response);
    await response.body?.cancel();
  }

  /** Sends one heartbeat; returns the server's online threshold when its answer says it. */
  async heartbeat(userId: number): Promise<number | undefined> {
    const response = await this.request('/status/update', {
      method: 'POST',
      json: { user_id: userId, device_id: this.device.id, device_kind: this.device.kind },
    });
    await this.expectOk(response);
    const threshold = Number(response.headers.get('pulse-online-threshold-seconds'));
    return Number.isFinite(threshold) && threshold > 0 ? threshold : undefined;
  }

  /** This device goes offline (the user too, unless another device of theirs is online). */
  async offline(userId: number): Promise<void> {
    await this.expectOk(
      await this.request('/status/offline', {
        method: 'POST',
        json: { user_id: userId, device_id: this.device.id },
      }),
    );
  }

  /**
   * Offline from a page that is going away: a keepalive fetch outlives the page, and it must
   * start synchronously, so it uses the token already known.
   */
  offlineOnUnload(userId: number): void {
    // With a grace: a page cannot tell a close from a reload, and a reloaded page's stream beats
    // before the grace is over, which cancels the offline on the server.
    this.fetchImpl(`${this.base}/status/offline?grace_ms=${UNLOAD_OFFLINE_GRACE_MS}`, {
      method: 'POST',
      keepalive: true,
      headers: headersFor(this.credentials.current, true),
      body: JSON.stringify({ user_id: userId, device_id: this.device.id }),
    }).catch(() => {
      // The page is gone: nobody is left to tell.
    });
  }

  async batch(
    userIds: readonly number[],
  ): Promise<{ user_id: number; is_online: boolean; devices?: DeviceSummary }[]> {
    const response = await this.request('/status/batch', {
      method: 'POST',
      json: userIds.map((id) => ({ user_id: id })),
    });
    if (!response.ok) throw await errorFrom(response);
    return (await response.json()) as {
      user_id: number;
      is_online: boolean;
      devices?: DeviceSummary;
    }[];
  }
}

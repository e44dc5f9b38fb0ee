/** How the deliverer talks to the network (webhooks/http-sender.ts implements it). */
export interface DeliveryRequest {
  url: string;
  body: string;
  headers: Record<string, string>;
}

/**
 * What one request came to. `http_error`: an answer that is not 2xx (3xx included: redirects are
 * not followed); `refused_target`: the address rule refused the URL or the address it resolved to.
 */
export type DeliveryResult =
  | { outcome: 'delivered'; status: number }
  | { outcome: 'http_error'; status: number; retryAfterMs?: number }
  | { outcome: 'timeout' }
  | { outcome: 'network_error'; error: string }
  | { outcome: 'refused_target'; error: string };

export type DeliveryOutcome = DeliveryResult['outcome'];

/** Sends one request; never rejects (a failure is a result). `signal` aborts it (shutdown). */
export type Send = (request: DeliveryRequest, signal: AbortSignal) => Promise<DeliveryResult>;

export function describeResult(result: DeliveryResult): string {
  switch (result.outcome) {
    case 'delivered':
      return `delivered (${result.status})`;
    case 'http_error':
      return `answered ${result.status}`;
    case 'timeout':
      return 'timed out';
    case 'network_error':
      return `connection failed: ${result.error}`;
    case 'refused_target':
      return `refused by the address rule: ${result.error}`;
  }
}

/**
 * What a webhook carries: the body (Standard Webhooks' type/timestamp/data envelope) and its
 * signed headers. The body of a batch is the same bytes on every attempt; only the timestamp
 * header and the signature change.
 */
import { Webhook } from 'standardwebhooks';
import type { PresenceEvent } from '../store/presence-log.ts';
import type { WebhookEvent } from '../store/webhook-store.ts';

export const EVENT_TYPE = 'presence.changed';

export function toWebhookEvent(event: PresenceEvent): WebhookEvent {
  return {
    seq: event.seq,
    user_id: event.userId,
    online: event.online,
    reason: event.reason,
    at: event.at.toISOString(),
    last_seen: event.lastSeen === null ? null : event.lastSeen.toISOString(),
  };
}

export function batchBody(events: readonly WebhookEvent[], createdAt: Date): string {
  return JSON.stringify({
    type: EVENT_TYPE,
    timestamp: createdAt.toISOString(),
    data: { events },
  });
}

/** webhook-id, webhook-timestamp and webhook-signature for one attempt, signed now. */
export function signedHeaders(
  secret: string,
  id: string,
  body: string,
  now = new Date(),
): Record<string, string> {
  return {
    'webhook-id': id,
    'webhook-timestamp': String(Math.floor(now.getTime() / 1000)),
    'webhook-signature': new Webhook(secret).sign(id, now, body),
  };
}

import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import type { DelivererObserver } from '../lib/webhooks/endpoint-deliverer.ts';

/**
 * The deliverer's Prometheus series, labelled by endpoint name. Backlog gauges come from the
 * process holding the endpoint's lease only (others drop them), so max() across processes is the
 * endpoint's backlog.
 */
export function createWebhookMetrics(registry: Registry): DelivererObserver {
  const registers = [registry];
  const requests = new Counter({
    name: 'pulse_webhook_requests_total',
    help: 'Webhook requests by outcome: delivered, http_error (not 2xx), timeout, network_error, refused_target',
    labelNames: ['endpoint', 'outcome'] as const,
    registers,
  });
  const delivered = new Counter({
    name: 'pulse_webhook_events_delivered_total',
    help: 'Events in batches the receiver answered 2xx (a retried batch counts each time it is delivered)',
    labelNames: ['endpoint'] as const,
    registers,
  });
  const parked = new Counter({
    name: 'pulse_webhook_batches_parked_total',
    help: 'Batches given up on after WEBHOOKS_RETRY_FOR_SECONDS and moved to pulse_webhook_parked',
    labelNames: ['endpoint'] as const,
    registers,
  });
  const duration = new Histogram({
    name: 'pulse_webhook_request_duration_seconds',
    help: 'Duration of webhook requests, any outcome',
    labelNames: ['endpoint'] as const,
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers,
  });
  const delay = new Histogram({
    name: 'pulse_webhook_delivery_delay_seconds',
    help: "From a transition being logged (pulse_events.at) to the receiver's 2xx for its batch",
    labelNames: ['endpoint'] as const,
    buckets: [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600, 86_400],
    registers,
  });
  const backlogEvents = new Gauge({
    name: 'pulse_webhook_backlog_events',
    help: 'Transitions not yet delivered to the endpoint (pending batches and the log past its cursor)',
    labelNames: ['endpoint'] as const,
    registers,
  });
  const backlogAge = new Gauge({
    name: 'pulse_webhook_backlog_age_seconds',
    help: 'Age of the oldest transition not yet delivered to the endpoint (0: none), database clock',
    labelNames: ['endpoint'] as const,
    registers,
  });
  const parkedBatches = new Gauge({
    name: 'pulse_webhook_parked_batches',
    help: 'Batches of the endpoint in pulse_webhook_parked, waiting for a DBA to replay them',
    labelNames: ['endpoint'] as const,
    registers,
  });
  const leaseHeld = new Gauge({
    name: 'pulse_webhook_lease_held',
    help: "1 while this process holds the endpoint's delivery lease",
    labelNames: ['endpoint'] as const,
    registers,
  });

  return {
    onAttempt(endpoint, result, durationMs, events) {
      const labels = { endpoint: endpoint.name };
      requests.inc({ ...labels, outcome: result.outcome });
      duration.observe(labels, durationMs / 1000);
      if (result.outcome !== 'delivered') return;
      delivered.inc(labels, events.length);
      const now = Date.now();
      for (const event of events) delay.observe(labels, (now - Date.parse(event.at)) / 1000);
    },
    onParked(endpoint) {
      parked.inc({ endpoint: endpoint.name });
    },
    onBacklog(endpoint, backlog) {
      const labels = { endpoint: endpoint.name };
      backlogEvents.set(labels, backlog.events);
      backlogAge.set(labels, backlog.oldestAgeSeconds);
      parkedBatches.set(labels, backlog.parkedBatches);
    },
    onLease(endpoint, held) {
      const labels = { endpoint: endpoint.name };
      leaseHeld.set(labels, held ? 1 : 0);
      if (!held) {
        backlogEvents.remove(labels);
        backlogAge.remove(labels);
        parkedBatches.remove(labels);
      }
    },
  };
}

import type { Request, Response } from 'express';
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import type { Admission, ShedReason } from './edge/admission.ts';
import type { FlushObserver, HeartbeatWriter } from './write/heartbeat-writer.ts';

export interface ApiMetrics {
  /**
   * Records a finished request's duration, labelled by method, route pattern (never the raw path)
   * and status. api/edge/edge.ts calls it when the response has finished.
   */
  observeRequest: (req: Request, res: Response, seconds: number) => void;
  /** Feeds flush sizes and durations into the registry. */
  flushObserver: Required<FlushObserver>;
  /** Reports the heartbeat queue depth at scrape time. */
  watchQueue(writer: HeartbeatWriter): void;
  /** Counts requests refused by admission control, by reason. */
  onShed(reason: ShedReason): void;
  /** Reports the requests in flight at scrape time. */
  watchAdmission(admission: Admission): void;
}

export function createApiMetrics(registry: Registry): ApiMetrics {
  const registers = [registry];
  const requestDuration = new Histogram({
    name: 'pulse_http_request_duration_seconds',
    help: 'HTTP request duration by method, route pattern and status code',
    labelNames: ['method', 'route', 'status_code'] as const,
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers,
  });
  // One child per (route, method, status), made on first use: observing through it spares building
  // and merging a label object per request (docs/request-cost.md).
  type Child = ReturnType<typeof requestDuration.labels>;
  const children = new Map<string, Map<string, Map<number, Child>>>();
  const requestDurationOf = (method: string, route: string, status: number): Child => {
    let byMethod = children.get(route);
    if (byMethod === undefined)
      children.set(route, (byMethod = new Map<string, Map<number, Child>>()));
    let byStatus = byMethod.get(method);
    if (byStatus === undefined) byMethod.set(method, (byStatus = new Map<number, Child>()));
    let child = byStatus.get(status);
    if (child === undefined) {
      child = requestDuration.labels({ method, route, status_code: String(status) });
      byStatus.set(status, child);
    }
    return child;
  };
  const heartbeatsAccepted = new Counter({
    name: 'pulse_heartbeats_accepted_total',
    help: 'Heartbeats (user ids) committed to the database',
    registers,
  });
  const flushIds = new Histogram({
    name: 'pulse_heartbeat_flush_ids',
    help: 'User ids written per heartbeat statement (group commit batch size)',
    buckets: [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000],
    registers,
  });
  const flushDuration = new Histogram({
    name: 'pulse_heartbeat_flush_duration_seconds',
    help: 'Duration of heartbeat statements, by outcome',
    labelNames: ['outcome'] as const,
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
    registers,
  });
  let queuedIds = () => 0;
  new Gauge({
    name: 'pulse_heartbeat_queue_ids',
    help: 'Heartbeat user ids waiting for a flush',
    registers,
    collect() {
      this.set(queuedIds());
    },
  });

  const shed = new Counter({
    name: 'pulse_http_requests_refused_total',
    help: 'Requests refused by admission control, by reason: in_flight, queue_wait (503 overloaded), body_timeout (408: the body did not arrive in time), deadline_exceeded (503: no answer in time)',
    labelNames: ['reason'] as const,
    registers,
  });
  for (const reason of ['in_flight', 'queue_wait', 'body_timeout', 'deadline_exceeded'] as const) {
    shed.inc({ reason }, 0);
  }
  let inFlight = () => 0;
  new Gauge({
    name: 'pulse_http_requests_in_flight',
    help: 'Weight of the requests admitted by admission control and not yet answered (1, plus 1 per started 4 KiB of body read)',
    registers,
    collect() {
      this.set(inFlight());
    },
  });

  return {
    onShed(reason) {
      shed.inc({ reason });
    },
    watchAdmission(admission) {
      inFlight = () => admission.inFlight;
    },
    observeRequest(req, res, seconds) {
      // The pattern (/status/:userId), so user ids never become label values.
      const pattern = (req.route as { path?: unknown } | undefined)?.path;
      const route = typeof pattern === 'string' ? `${req.baseUrl}${pattern}` : 'unmatched';
      requestDurationOf(req.method, route, res.statusCode).observe(seconds);
    },
    flushObserver: {
      onFlush({ ids, seconds, ok }) {
        flushIds.observe(ids);
        flushDuration.observe({ outcome: ok ? 'ok' : 'error' }, seconds);
        if (ok) heartbeatsAccepted.inc(ids);
      },
    },
    watchQueue(writer) {
      queuedIds = () => writer.queuedIds;
    },
  };
}

import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import type { PresenceFeedObserver } from './poll-feed.ts';
import type { HeldPresence } from './held-presence.ts';
import type { StreamHub, StreamObserver } from './status-stream.ts';

export interface StreamMetrics {
  streamObserver: Required<StreamObserver>;
  feedObserver: Required<Pick<PresenceFeedObserver, 'onStatement'>>;
  /** Reports open streams, watched ids and held users at scrape time. */
  watch(parts: { hub: StreamHub; feed: { watchedIds: number }; held: HeldPresence }): void;
}

/** The live stream's metrics: open streams, events sent, change-detection statements. */
export function createStreamMetrics(registry: Registry): StreamMetrics {
  const registers = [registry];
  let read = { open: () => 0, max: () => 0, watched: () => 0, held: () => 0 };
  new Gauge({
    name: 'pulse_streams_open',
    help: 'Open GET /status/stream connections (admitted, including those reading their snapshot)',
    registers,
    collect() {
      this.set(read.open());
    },
  });
  new Gauge({
    name: 'pulse_streams_max',
    help: 'Most open streams this process admits (STREAM_MAX_OPEN); above it, 503 too_many_streams',
    registers,
    collect() {
      this.set(read.max());
    },
  });
  new Gauge({
    name: 'pulse_stream_watched_ids',
    help: 'Distinct user ids watched by the streams of this process (what each poll re-reads)',
    registers,
    collect() {
      this.set(read.watched());
    },
  });
  new Gauge({
    name: 'pulse_stream_held_users',
    help: 'Users kept online by an open stream of this process (connection-held presence)',
    registers,
    collect() {
      this.set(read.held());
    },
  });
  const events = new Counter({
    name: 'pulse_stream_events_sent_total',
    help: 'Server-sent events written to streams, by event (snapshot, change)',
    labelNames: ['event'] as const,
    registers,
  });
  const closed = new Counter({
    name: 'pulse_streams_closed_total',
    help: 'Streams ended, by reason (client_closed, slow_consumer, token_expired, shutting_down)',
    labelNames: ['reason'] as const,
    registers,
  });
  const rejected = new Counter({
    name: 'pulse_streams_rejected_total',
    help: 'Streams refused with 503, by code (too_many_streams, shutting_down)',
    labelNames: ['code'] as const,
    registers,
  });
  const statements = new Histogram({
    name: 'pulse_change_detection_statement_duration_seconds',
    help: 'Change-detection statements (detect: the poll of watched ids; describe: re-reading flipped ids), by outcome; _count is the number of statements',
    labelNames: ['kind', 'outcome'] as const,
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
    registers,
  });
  return {
    streamObserver: {
      onEvent: (event, count) => events.inc({ event }, count),
      onClose: (reason) => closed.inc({ reason }),
      onRejected: (code) => rejected.inc({ code }),
    },
    feedObserver: {
      onStatement: ({ kind, seconds, ok }) =>
        statements.observe({ kind, outcome: ok ? 'ok' : 'error' }, seconds),
    },
    watch({ hub, feed, held }) {
      read = {
        open: () => hub.open,
        max: () => hub.options.maxOpen,
        watched: () => feed.watchedIds,
        held: () => held.size,
      };
    },
  };
}

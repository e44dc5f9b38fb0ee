import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import type { SweepReport } from './sweeper.ts';

/** Turns every sweep report into Prometheus series; returns the Sweeper's onSweep hook. */
export function createSweeperMetrics(registry: Registry): (report: SweepReport) => void {
  const registers = [registry];
  const sweeps = new Counter({
    name: 'pulse_sweeps_total',
    help: 'Sweeps by outcome: done, skipped (another sweeper held the lease), stopped, lease-lost, failed',
    labelNames: ['outcome'] as const,
    registers,
  });
  const rowsDeleted = new Counter({
    name: 'pulse_sweep_rows_deleted_total',
    help: 'Expired rows deleted by this sweeper',
    registers,
  });
  const skipped = new Counter({
    name: 'pulse_sweep_skipped_total',
    help: 'Ticks skipped because another sweeper held the sweep lease',
    registers,
  });
  const duration = new Histogram({
    name: 'pulse_sweep_duration_seconds',
    help: 'Duration of sweeps that held the lease',
    buckets: [0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120],
    registers,
  });
  const lastSuccess = new Gauge({
    name: 'pulse_sweep_last_success_timestamp_seconds',
    help: 'Unix time at which the last complete sweep of this sweeper finished (0: none yet)',
    registers,
  });

  return (report) => {
    sweeps.inc({ outcome: report.outcome });
    rowsDeleted.inc(report.deleted);
    if (report.outcome === 'skipped') skipped.inc();
    if (report.leaseHeld) duration.observe(report.durationMs / 1000);
    if (report.outcome === 'done') lastSuccess.set(Date.now() / 1000);
  };
}

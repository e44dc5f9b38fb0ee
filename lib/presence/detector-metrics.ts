import { Counter, Gauge, type Registry } from 'prom-client';
import type { OfflineDetectorObserver } from './offline-detector.ts';

/** An offline detector, or the per-group detectors of a process on Citus (group-detectors.ts). */
export interface DetectorState {
  readonly leasesHeld: number;
  readonly scheduled: number;
}

/** The offline detector's metrics, for whichever process (API or sweeper) runs one. */
export function createDetectorMetrics(registry: Registry): {
  observer: Required<Pick<OfflineDetectorObserver, 'onTick'>>;
  watch(detector: DetectorState): void;
} {
  const registers = [registry];
  let read = { held: () => 0, scheduled: () => 0 };
  new Gauge({
    name: 'pulse_offline_detector_lease_held',
    help: 'Offline detector leases this process holds (one per database; on Citus one per node group)',
    registers,
    collect() {
      this.set(read.held());
    },
  });
  new Gauge({
    name: 'pulse_offline_detector_scheduled_users',
    help: 'Users marked online whose expiry the detector of this process is watching',
    registers,
    collect() {
      this.set(read.scheduled());
    },
  });
  const expired = new Counter({
    name: 'pulse_offline_detector_expired_total',
    help: 'Users this process took offline by the threshold (one threshold event each)',
    registers,
  });
  const checked = new Counter({
    name: 'pulse_offline_detector_checked_total',
    help: 'Users this process looked at because they were due to expire',
    registers,
  });
  const statements = new Counter({
    name: 'pulse_offline_detector_statements_total',
    help: 'Expiry statements run by the detector of this process',
    registers,
  });
  return {
    observer: {
      onTick(tick) {
        expired.inc(tick.expired);
        checked.inc(tick.checked);
        statements.inc(tick.statements);
      },
    },
    watch(detector) {
      read = {
        held: () => detector.leasesHeld,
        scheduled: () => detector.scheduled,
      };
    },
  };
}

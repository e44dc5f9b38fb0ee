import type { PoolCounts } from './db.ts';
import { collectDefaultMetrics, Gauge, Registry } from 'prom-client';

/**
 * A process's metrics registry: Node's default process metrics and the pg pool's connections.
 * Everything is read from memory at scrape time; nothing here costs a database round trip.
 */
export function createRegistry(pool: PoolCounts): Registry {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  new Gauge({
    name: 'pulse_pg_pool_connections',
    help: 'Connections of the pg pool, by state (total, idle, waiting = queued requests for a connection)',
    labelNames: ['state'] as const,
    registers: [registry],
    collect() {
      this.set({ state: 'total' }, pool.totalCount);
      this.set({ state: 'idle' }, pool.idleCount);
      this.set({ state: 'waiting' }, pool.waitingCount);
    },
  });
  return registry;
}

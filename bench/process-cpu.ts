/**
 * CPU time of local processes, read from /proc: the benchmark's way to count what the API and the
 * PostgreSQL backends spend per heartbeat (pg_stat_statements is not loaded on every server, and
 * it does not count commit and WAL flush work, which is most of a heartbeat's cost).
 */
import { readFileSync } from 'node:fs';
import type { BenchDatabase } from './support.ts';

// USER_HZ: the unit of utime/stime in /proc/<pid>/stat; 100 on every Linux architecture Node runs on.
const CLOCK_TICKS_PER_SECOND = 100;

/** User + system CPU seconds of a process so far, or undefined when it is gone (or not local). */
export function processCpuSeconds(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command name (which may contain spaces) start at field 3 (state).
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const utime = Number(fields[11]);
    const stime = Number(fields[12]);
    return (utime + stime) / CLOCK_TICKS_PER_SECOND;
  } catch {
    return undefined;
  }
}

export interface BackendCpu {
  /** CPU seconds of the client backends (the connections of the process under test). */
  backendsSeconds: number;
  /** CPU seconds of autovacuum workers in the benchmark's database during the window. */
  autovacuumSeconds: number;
  /** Distinct backend processes seen. */
  processes: number;
}

/**
 * Samples the PostgreSQL processes of the benchmark database (pg_stat_activity) every `everyMs`
 * and sums the CPU they spent between start() and stop(). A process seen only after start() counts
 * from its birth (it started inside the window); one that exits counts up to its last sample.
 * Needs the server on this machine: `local` is false (and the figures zero) otherwise.
 */
export function watchBackends(db: BenchDatabase, applicationName: string, everyMs = 200) {
  const seen = new Map<number, { kind: 'client' | 'autovacuum'; first: number; last: number }>();
  let local = true;
  const sample = async (baseline: boolean) => {
    const { rows } = await db.query<{ pid: number; kind: string }>(
      `SELECT pid, backend_type AS kind FROM pg_stat_activity
        WHERE datname = current_database()
          AND (application_name = $1 OR backend_type = 'autovacuum worker')`,
      [applicationName],
    );
    for (const { pid, kind } of rows) {
      const cpu = processCpuSeconds(pid);
      if (cpu === undefined) {
        local = false;
        continue;
      }
      const entry = seen.get(pid);
      if (entry) entry.last = cpu;
      else
        seen.set(pid, {
          kind: kind === 'autovacuum worker' ? 'autovacuum' : 'client',
          first: baseline ? cpu : 0,
          last: cpu,
        });
    }
  };
  let timer: NodeJS.Timeout | undefined;
  let pending: Promise<void> = Promise.resolve();
  return {
    async start(): Promise<void> {
      await sample(true);
      timer = setInterval(() => {
        pending = pending.then(() => sample(false)).catch(() => undefined);
      }, everyMs);
    },
    async stop(): Promise<BackendCpu & { local: boolean }> {
      clearInterval(timer);
      await pending;
      await sample(false);
      let backendsSeconds = 0;
      let autovacuumSeconds = 0;
      for (const { kind, first, last } of seen.values()) {
        if (kind === 'client') backendsSeconds += last - first;
        else autovacuumSeconds += last - first;
      }
      return { backendsSeconds, autovacuumSeconds, processes: seen.size, local };
    },
  };
}

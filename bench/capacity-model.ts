/**
 * The capacity model: what a deployment needs for a number of users, from the figures measured by
 * `npm run bench:scale` (bench/results/scale.json) and nothing else. Every output carries its
 * formula and the measured constants it used, named with the machine they were measured on.
 * docs/capacity.md explains the formulas.
 */
import type { ScaleResults, SizeResult } from './scale.ts';

export interface CapacityInputs {
  /** Registered users. */
  users: number;
  /** Share of users online at the busiest moment (0..1]. */
  online: number;
  /** Seconds between two heartbeats of a client. */
  interval: number;
  /** Share of heartbeats that reach the API in gateway batches of 1,000 (0..1). */
  gatewayShare: number;
  /** Average online session in seconds: users going offline per second = online rows / session. */
  session: number;
  /** CPU share a process may use at peak (headroom for spikes, failover, vacuum). */
  utilisation: number;
  /** Cores of the largest PostgreSQL server you would run (the one-server limit). */
  dbServerCores: number;
  /** Memory of that server in GB: the table and its key should stay in memory. */
  dbServerMemoryGb: number;
  /** Users holding a live stream (GET /status/stream) at the busiest moment (0: none). */
  streams?: number;
  /** pulse_settings.online_threshold_seconds (the offline detector looks at each online user once per threshold). */
  threshold?: number;
}

/** What `npm run bench:stream` wrote (bench/results/stream.json): the change log's costs. */
export interface StreamFigures {
  measuredAt: string;
  machine: string;
  sizes: { streamCount: number; onlineCount: number };
  phases: Array<{
    apis: number;
    streams: number;
    dbCores: number;
    apiCores: number;
    apiRssMb: number;
    logReadsPerSecond: number;
    detectorCheckedPerSecond: number;
  }>;
}

/** Streams one API process holds (STREAM_MAX_OPEN's default). */
const STREAMS_PER_PROCESS = 10_000;
/** Reads of the change log per second: each API process (STREAM_POLL_INTERVAL_MS 500) and the detector (250). */
const LOG_READS_PER_PROCESS = 2;
const LOG_READS_DETECTOR = 4;

/**
 * The change log's constants from two phases of bench:stream (fewer and more API processes, the
 * same streams and online users): the database CPU one more log read costs, and what is left per
 * user the detector looks at.
 */
export function streamConstants(figures: StreamFigures): {
  dbUsPerLogRead: number;
  dbUsPerDetectorCheck: number;
  apiUsPerStreamSecond: number;
  apiMbPerStream: number;
} {
  const [few, many] = [...figures.phases].sort((a, b) => a.apis - b.apis);
  if (!few || !many || few.apis === many.apis) throw new Error('stream.json needs two phases');
  const perRead =
    Math.max(0, many.dbCores - few.dbCores) / (many.logReadsPerSecond - few.logReadsPerSecond);
  const detector = Math.max(0, few.dbCores - few.logReadsPerSecond * perRead);
  return {
    dbUsPerLogRead: perRead * 1e6,
    dbUsPerDetectorCheck: (detector / few.detectorCheckedPerSecond) * 1e6,
    apiUsPerStreamSecond: (few.apiCores / few.streams) * 1e6,
    apiMbPerStream: (few.apiRssMb * few.apis) / few.streams,
  };
}

/** Citus figures from the Citus benchmark (issue 15), when it has written them. */
export interface CitusFigures {
  machine: { label: string };
  /** Where the API's statements went when these were measured ('workers': a pool per worker). */
  apiConnectedTo?: 'coordinator' | 'workers';
  /** Coordinator CPU per heartbeat (µs), by write path. */
  coordinatorCpuUsPerHeartbeat: { groupCommit: number; gatewayBatch: number };
  /** Worker CPU per heartbeat (µs), summed over the workers, by write path. */
  workerCpuUsPerHeartbeat: { groupCommit: number; gatewayBatch: number };
}

export interface Constant {
  name: string;
  value: number;
  unit: string;
  source: string;
}

export interface Line {
  quantity: string;
  value: number;
  unit: string;
  formula: string;
}

export interface CapacityReport {
  inputs: CapacityInputs;
  machine: string;
  measuredAt: string;
  constants: Constant[];
  lines: Line[];
  oneServer: {
    /** Users (at these inputs) one PostgreSQL server of dbServerCores carries, CPU-wise. */
    maxUsersByCpu: number;
    /** Users whose rows fit in dbServerMemoryGb. */
    maxUsersByMemory: number;
    enough: boolean;
  };
  citus:
    { status: 'pending'; note: string } | { status: 'measured'; lines: Line[]; machine: string };
  seed: { claimGb: number; modelGb: number; note: string };
}

/** The measurements the model uses: the largest table size measured. */
export function constantsFrom(results: ScaleResults): {
  size: SizeResult;
  constants: Record<string, Constant>;
} {
  const size = [...results.sizes].sort((a, b) => b.rows - a.rows)[0];
  if (!size) throw new Error('the benchmark JSON has no table sizes');
  const at = `bench:scale, ${size.rows.toLocaleString('en-US')} rows`;
  const c = (name: string, value: number, unit: string, where = at): Constant => ({
    name,
    value,
    unit,
    source: where,
  });
  const h = size.heartbeats;
  return {
    size,
    constants: {
      bytesPerRow: c(
        'bytes per row (heap + primary key, after load)',
        size.storage.afterLoad.bytesPerRow.total,
        'B',
      ),
      dbUsSingle: c(
        'PostgreSQL CPU per single heartbeat, group commit',
        h.groupCommit.dbCpuUsPerId,
        'µs',
      ),
      dbUsGateway: c(
        'PostgreSQL CPU per heartbeat in a gateway batch',
        h.gatewayBatch.dbCpuUsPerId,
        'µs',
      ),
      apiUsSingle: c('API CPU per single heartbeat', h.groupCommit.apiCpuUsPerId, 'µs'),
      apiUsGateway: c(
        'API CPU per heartbeat in a gateway batch',
        h.gatewayBatch.apiCpuUsPerId,
        'µs',
      ),
      dbUsPerDeletedRow: c('PostgreSQL CPU per swept row', size.sweep.dbCpuUsPerDeletedRow, 'µs'),
      sweepTableRowsPerSecond: c(
        'table rows a sweep walks per second',
        size.sweep.tableRowsPerSecond,
        'rows/s',
      ),
      sweepDeletedRowsPerSecond: c(
        'expired rows a sweep deletes per second (10% expired)',
        size.sweep.deletedRowsPerSecond,
        'rows/s',
      ),
      batchReadP99: c('POST /status/batch of 1,000 ids, p99', size.batchRead.p99Ms, 'ms'),
      dbUsPerBatchRead: c(
        'PostgreSQL CPU per /status/batch of 1,000 ids',
        size.batchRead.dbCpuUsPerRequest,
        'µs',
      ),
    },
  };
}

const ceil = Math.ceil;

export function capacity(
  inputs: CapacityInputs,
  results: ScaleResults,
  citus?: CitusFigures,
  stream?: StreamFigures,
): CapacityReport {
  const { constants: k } = constantsFrom(results);
  const { users, online, interval, gatewayShare, session, utilisation } = inputs;
  const rows = users * online;
  const heartbeatsPerSecond = rows / interval;
  const single = heartbeatsPerSecond * (1 - gatewayShare);
  const batched = heartbeatsPerSecond * gatewayShare;
  const dbCores = (single * k.dbUsSingle!.value + batched * k.dbUsGateway!.value) / 1e6;
  const apiCores = (single * k.apiUsSingle!.value + batched * k.apiUsGateway!.value) / 1e6;
  const gb = (rows * k.bytesPerRow!.value) / 1e9;
  const sweptPerSecond = rows / session;
  const sweepCores = (sweptPerSecond * k.dbUsPerDeletedRow!.value) / 1e6;
  const sweepWalkSeconds = rows / k.sweepTableRowsPerSecond!.value;
  const dbCoresTotal = dbCores + sweepCores;
  const lines: Line[] = [
    {
      quantity: 'rows in pulse (users online)',
      value: rows,
      unit: 'rows',
      formula: 'users × online',
    },
    {
      quantity: 'table + primary key',
      value: gb,
      unit: 'GB',
      formula: 'rows × bytes per row / 1e9',
    },
    {
      quantity: 'heartbeats per second',
      value: heartbeatsPerSecond,
      unit: '/s',
      formula: 'rows / interval',
    },
    {
      quantity: 'gateway batches of 1,000 per second',
      value: batched / 1000,
      unit: '/s',
      formula: 'heartbeats/s × gateway share / 1000',
    },
    {
      quantity: 'PostgreSQL cores for heartbeats',
      value: dbCores,
      unit: 'cores',
      formula: '(single/s × µs per single + batched/s × µs per batched) / 1e6',
    },
    {
      quantity: 'rows swept per second',
      value: sweptPerSecond,
      unit: '/s',
      formula: 'rows / session',
    },
    {
      quantity: 'PostgreSQL cores for the sweep',
      value: sweepCores,
      unit: 'cores',
      formula: 'swept/s × µs per swept row / 1e6',
    },
    {
      quantity: 'PostgreSQL cores at the utilisation target',
      value: dbCoresTotal / utilisation,
      unit: 'cores',
      formula: '(heartbeat cores + sweep cores) / utilisation',
    },
    {
      quantity: 'API cores',
      value: apiCores,
      unit: 'cores',
      formula: '(single/s × API µs per single + batched/s × API µs per batched) / 1e6',
    },
    {
      quantity: 'API processes (one core each)',
      value: ceil(apiCores / utilisation),
      unit: 'processes',
      formula: 'ceil(API cores / utilisation)',
    },
    {
      quantity: 'one sweep walks the table in',
      value: sweepWalkSeconds,
      unit: 's',
      formula: 'rows / table rows walked per second (one sweeper)',
    },
    {
      quantity: 'expired rows waiting for their sweep (up to)',
      value: sweptPerSecond * sweepWalkSeconds,
      unit: 'rows',
      formula: 'rows swept per second × sweep walk time',
    },
  ];
  if (stream) {
    const sc = streamConstants(stream);
    const where = `bench:stream, ${stream.sizes.streamCount.toLocaleString('en-US')} streams, ${stream.sizes.onlineCount.toLocaleString('en-US')} online`;
    k.dbUsPerLogRead = {
      name: 'PostgreSQL CPU per change log read',
      value: sc.dbUsPerLogRead,
      unit: 'µs',
      source: where,
    };
    k.dbUsPerDetectorCheck = {
      name: 'PostgreSQL CPU per user the offline detector looks at',
      value: sc.dbUsPerDetectorCheck,
      unit: 'µs',
      source: where,
    };
    k.apiUsPerStreamSecond = {
      name: 'API CPU per open stream and second (changes flowing)',
      value: sc.apiUsPerStreamSecond,
      unit: 'µs',
      source: where,
    };
    k.apiMbPerStream = {
      name: 'API memory per open stream (RSS, all included)',
      value: sc.apiMbPerStream,
      unit: 'MB',
      source: where,
    };
    const streams = inputs.streams ?? 0;
    const threshold = inputs.threshold ?? 20;
    const streamProcesses = ceil(streams / STREAMS_PER_PROCESS);
    const detectorCores = ((rows / threshold) * sc.dbUsPerDetectorCheck) / 1e6;
    const readCores =
      ((streamProcesses * LOG_READS_PER_PROCESS + LOG_READS_DETECTOR) * sc.dbUsPerLogRead) / 1e6;
    lines.push(
      {
        quantity: 'PostgreSQL cores: offline detector',
        value: detectorCores,
        unit: 'cores',
        formula: 'rows / threshold × µs per detector check / 1e6',
      },
      {
        quantity: 'API processes holding streams',
        value: streamProcesses,
        unit: 'processes',
        formula: `ceil(streams / ${STREAMS_PER_PROCESS.toLocaleString('en-US')})`,
      },
      {
        quantity: 'PostgreSQL cores: change log reads',
        value: readCores,
        unit: 'cores',
        formula: `(stream processes × ${LOG_READS_PER_PROCESS} + ${LOG_READS_DETECTOR}) reads/s × µs per read / 1e6`,
      },
      {
        quantity: 'API cores for streams',
        value: (streams * sc.apiUsPerStreamSecond) / 1e6,
        unit: 'cores',
        formula: 'streams × API µs per stream and second / 1e6',
      },
      {
        quantity: 'API memory for streams',
        value: (streams * sc.apiMbPerStream) / 1000,
        unit: 'GB',
        formula: 'streams × MB per stream / 1000',
      },
      {
        quantity: 'change log events per day',
        value: ((2 * rows) / session) * 86_400,
        unit: 'rows',
        formula: '2 × rows / session × 86,400 (an online and an offline per session)',
      },
    );
  }
  // Cores needed grow linearly with users: scale until the server's cores (at the target) are used.
  const maxUsersByCpu = (users * inputs.dbServerCores * utilisation) / dbCoresTotal;
  const maxUsersByMemory = (inputs.dbServerMemoryGb * 1e9) / k.bytesPerRow!.value / online;
  const oneServer = {
    maxUsersByCpu,
    maxUsersByMemory,
    enough: users <= maxUsersByCpu && users <= maxUsersByMemory,
  };

  let citusPart: CapacityReport['citus'] = {
    status: 'pending',
    note: 'Citus figures are measured under issue 15; the model reads them from bench/results/citus.json once it exists',
  };
  if (citus) {
    const coordinator =
      (single * citus.coordinatorCpuUsPerHeartbeat.groupCommit +
        batched * citus.coordinatorCpuUsPerHeartbeat.gatewayBatch) /
      1e6;
    const workers =
      (single * citus.workerCpuUsPerHeartbeat.groupCommit +
        batched * citus.workerCpuUsPerHeartbeat.gatewayBatch) /
      1e6;
    citusPart = {
      status: 'measured',
      machine: citus.machine.label,
      lines: [
        {
          quantity:
            citus.apiConnectedTo === 'workers'
              ? 'Citus coordinator cores (API on the workers)'
              : 'Citus coordinator cores',
          value: coordinator / utilisation,
          unit: 'cores',
          formula: 'heartbeats/s × coordinator µs / 1e6 / utilisation',
        },
        {
          quantity: 'Citus worker cores (all workers)',
          value: workers / utilisation,
          unit: 'cores',
          formula: 'heartbeats/s × worker µs / 1e6 / utilisation',
        },
        {
          quantity: 'Citus workers of dbServerCores each',
          value: ceil(workers / utilisation / inputs.dbServerCores),
          unit: 'servers',
          formula: 'ceil(worker cores / db server cores)',
        },
      ],
    };
  }

  const seedGb = (users * 8) / 1e9;
  return {
    inputs,
    machine: results.machine.label,
    measuredAt: results.measuredAt,
    constants: Object.values(k),
    lines,
    oneServer,
    citus: citusPart,
    seed: {
      claimGb: seedGb,
      modelGb: gb,
      note: `the seed counts 8 bytes (one bigint) per registered user; PostgreSQL keeps a row only per online user but spends ${k.bytesPerRow!.value} bytes on it (tuple header, line pointer, fillfactor room, primary key)`,
    },
  };
}

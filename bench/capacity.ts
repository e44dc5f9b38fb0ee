/**
 * npm run capacity -- --users 1e9 --online 0.1 --interval 15
 *
 * Flags (defaults in brackets): --users [1e9] registered users; --online [0.1] share online at
 * peak; --interval [15] seconds between heartbeats; --gateway-share [0] share of heartbeats
 * arriving in gateway batches of 1,000; --session [1800] average online session in seconds;
 * --utilisation [0.6] CPU share planned at peak; --db-server-cores [64] and
 * --db-server-memory-gb [512] the largest single PostgreSQL server you would run;
 * --streams [0] users holding a live stream and --threshold [20] the online threshold (with
 * --stream [bench/results/stream.json], from npm run bench:stream: the change log, the offline
 * detector, stream processes); --results [bench/results/scale.json]; --citus
 * [bench/results/citus.json]; --json.
 */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import {
  capacity,
  type CapacityInputs,
  type CitusFigures,
  type Line,
  type StreamFigures,
} from './capacity-model.ts';
import type { ScaleResults } from './scale.ts';

const root = fileURLToPath(new URL('..', import.meta.url));
const { values } = parseArgs({
  options: {
    users: { type: 'string', default: '1e9' },
    online: { type: 'string', default: '0.1' },
    interval: { type: 'string', default: '15' },
    'gateway-share': { type: 'string', default: '0' },
    session: { type: 'string', default: '1800' },
    utilisation: { type: 'string', default: '0.6' },
    'db-server-cores': { type: 'string', default: '64' },
    'db-server-memory-gb': { type: 'string', default: '512' },
    results: { type: 'string', default: path.join(root, 'bench/results/scale.json') },
    citus: { type: 'string', default: path.join(root, 'bench/results/citus.json') },
    stream: { type: 'string', default: path.join(root, 'bench/results/stream.json') },
    streams: { type: 'string', default: '0' },
    threshold: { type: 'string', default: '20' },
    json: { type: 'boolean', default: false },
  },
});

function number(flag: string, min: number, max: number): number {
  const raw = values[flag as keyof typeof values] as string;
  const value = Number(raw);
  if (!Number.isFinite(value) || value < min || value > max) {
    console.error(`--${flag} must be a number from ${min} to ${max} (got ${JSON.stringify(raw)})`);
    process.exit(2);
  }
  return value;
}

const inputs: CapacityInputs = {
  users: number('users', 1, 1e12),
  online: number('online', 1e-6, 1),
  interval: number('interval', 1, 3600),
  gatewayShare: number('gateway-share', 0, 1),
  session: number('session', 1, 86_400 * 365),
  utilisation: number('utilisation', 0.05, 1),
  dbServerCores: number('db-server-cores', 1, 10_000),
  dbServerMemoryGb: number('db-server-memory-gb', 1, 1e6),
  streams: number('streams', 0, 1e12),
  threshold: number('threshold', 1, 86_400),
};
const results = JSON.parse(readFileSync(values.results, 'utf8')) as ScaleResults;
const citus = existsSync(values.citus)
  ? (JSON.parse(readFileSync(values.citus, 'utf8')) as CitusFigures)
  : undefined;
const stream = existsSync(values.stream)
  ? (JSON.parse(readFileSync(values.stream, 'utf8')) as StreamFigures)
  : undefined;
const report = capacity(inputs, results, citus, stream);

if (values.json) {
  console.log(JSON.stringify(report, null, 2));
} else {
  const fmt = (n: number) =>
    n >= 100
      ? Math.round(n).toLocaleString('en-US')
      : n.toLocaleString('en-US', { maximumSignificantDigits: 3 });
  const table = (lines: Line[]) =>
    lines
      .map(
        (l) =>
          `  ${l.quantity.padEnd(44)} ${fmt(l.value).padStart(16)} ${l.unit.padEnd(9)} ${l.formula}`,
      )
      .join('\n');
  const i = report.inputs;
  console.log(`Pulse capacity for ${fmt(i.users)} users, ${i.online * 100}% online, a heartbeat every ${i.interval} s, ${i.gatewayShare * 100}% through gateways, sessions of ${i.session} s, CPU planned at ${i.utilisation * 100}%

Measured constants (${report.machine}; ${report.measuredAt}):
${report.constants.map((c) => `  ${c.name.padEnd(56)} ${fmt(c.value).padStart(10)} ${c.unit}`).join('\n')}

Needs:
${table(report.lines)}

One PostgreSQL server of ${i.dbServerCores} cores and ${i.dbServerMemoryGb} GB (cores as fast as the measuring machine's):
  carries up to ${fmt(report.oneServer.maxUsersByCpu)} users by CPU and ${fmt(report.oneServer.maxUsersByMemory)} by memory: ${report.oneServer.enough ? 'enough' : 'NOT enough: distribute pulse with Citus (docs/capacity.md)'}

Citus: ${report.citus.status === 'pending' ? `pending (${report.citus.note})` : `measured on ${report.citus.machine}\n${table(report.citus.lines)}`}

The seed's estimate: ${fmt(report.seed.claimGb)} GB; this model: ${fmt(report.seed.modelGb)} GB (${report.seed.note})`);
}

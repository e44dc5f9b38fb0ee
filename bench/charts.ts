/**
 * npm run charts: the SVG charts in docs/charts/, drawn by Vega-Lite from the benchmark JSON
 * (bench/results/scale.json, or the file given as the first argument). Regenerate them after
 * every `npm run bench:scale`; never edit the SVGs by hand.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as vega from 'vega';
import { compile, type TopLevelSpec } from 'vega-lite';
import type { ScaleResults } from './scale.ts';

const root = fileURLToPath(new URL('..', import.meta.url));
const input = process.argv[2] ?? path.join(root, 'bench/results/scale.json');
const outDir = path.join(root, 'docs/charts');
const results = JSON.parse(readFileSync(input, 'utf8')) as ScaleResults;
const rowsLabel = (rows: number) =>
  rows >= 1e6 ? `${rows / 1e6}M rows` : `${Math.round(rows / 1e3)}k rows`;
const subtitle = `${results.machine.cpus} x ${results.machine.cpuModel}, PostgreSQL ${results.machine.postgres.split(' ')[0]}, shared machine, ${results.measuredAt.slice(0, 10)}`;

async function render(name: string, spec: TopLevelSpec): Promise<void> {
  const view = new vega.View(vega.parse(compile(spec).spec), { renderer: 'none' });
  const svg = await view.toSVG();
  view.finalize();
  writeFileSync(path.join(outDir, name), `${svg}\n`);
  console.error(`[charts] wrote docs/charts/${name}`);
}

const base = {
  $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
  config: { font: 'sans-serif', title: { subtitleFontSize: 10, anchor: 'start' as const } },
};

async function main(): Promise<void> {
  mkdirSync(outDir, { recursive: true });
  const sizes = results.sizes;

  await render('bytes-per-row.svg', {
    ...base,
    title: { text: 'Bytes per row in PostgreSQL (pulse, fillfactor 80)', subtitle },
    data: {
      values: sizes.flatMap((s) => [
        { size: rowsLabel(s.rows), part: 'heap', bytes: s.storage.atRest.bytesPerRow.heap },
        { size: rowsLabel(s.rows), part: 'primary key', bytes: s.storage.atRest.bytesPerRow.index },
      ]),
    },
    width: 320,
    height: 200,
    mark: { type: 'bar' },
    encoding: {
      x: { field: 'size', type: 'nominal', title: null, sort: null, axis: { labelAngle: 0 } },
      y: { field: 'bytes', type: 'quantitative', title: 'bytes per row', stack: 'zero' },
      color: { field: 'part', type: 'nominal', title: null },
    },
  });

  const modes = [
    ['group commit (single)', 'groupCommit'],
    ['one statement per request', 'oneStatementPerRequest'],
    ['gateway batch of 1,000', 'gatewayBatch'],
  ] as const;
  await render('db-cpu-per-heartbeat.svg', {
    ...base,
    title: { text: 'PostgreSQL CPU per heartbeat (microseconds)', subtitle },
    data: {
      values: sizes.flatMap((s) =>
        modes.map(([mode, key]) => ({
          size: rowsLabel(s.rows),
          mode,
          us: s.heartbeats[key].dbCpuUsPerId,
        })),
      ),
    },
    width: 300,
    height: 180,
    layer: [
      { mark: { type: 'bar' } },
      {
        mark: { type: 'text', align: 'left', dx: 3, fontSize: 10 },
        encoding: { text: { field: 'us' } },
      },
    ],
    encoding: {
      y: { field: 'mode', type: 'nominal', title: null, sort: null, axis: { labelLimit: 220 } },
      yOffset: { field: 'size', sort: null },
      x: { field: 'us', type: 'quantitative', title: 'µs of PostgreSQL CPU per heartbeat' },
      color: { field: 'size', type: 'nominal', title: null, sort: null },
    },
  });

  const optionB = 'skipped' in results.optionB ? undefined : results.optionB;
  const largest = sizes.at(-1)!;
  await render('batch-read-latency.svg', {
    ...base,
    title: {
      text: 'Reading 1,000 ids: POST /status/batch (Option A) and MGET (Option B), ms',
      subtitle,
    },
    data: {
      values: [
        ...sizes.flatMap((s) => [
          { what: `API, ${rowsLabel(s.rows)}`, q: 'p50', ms: s.batchRead.p50Ms },
          { what: `API, ${rowsLabel(s.rows)}`, q: 'p99', ms: s.batchRead.p99Ms },
        ]),
        ...(optionB
          ? [
              { what: 'Redis MGET, direct', q: 'p50', ms: optionB.batchRead.p50Ms },
              { what: 'Redis MGET, direct', q: 'p99', ms: optionB.batchRead.p99Ms },
            ]
          : []),
      ],
    },
    width: 360,
    height: 200,
    layer: [
      { mark: { type: 'bar' } },
      { mark: { type: 'text', dy: -6, fontSize: 10 }, encoding: { text: { field: 'ms' } } },
    ],
    encoding: {
      x: {
        field: 'what',
        type: 'nominal',
        title: null,
        sort: null,
        axis: { labelAngle: 0, labelLimit: 200 },
      },
      xOffset: { field: 'q' },
      y: { field: 'ms', type: 'quantitative', title: 'milliseconds' },
      color: { field: 'q', type: 'nominal', title: null },
    },
  });

  await render('sweep-rate.svg', {
    ...base,
    title: { text: 'One sweep (10% of rows expired): rows per second', subtitle },
    data: {
      values: sizes.flatMap((s) => [
        { rows: s.rows, what: 'expired rows deleted', perSecond: s.sweep.deletedRowsPerSecond },
        { rows: s.rows, what: 'table rows walked', perSecond: s.sweep.tableRowsPerSecond },
      ]),
    },
    width: 320,
    height: 200,
    mark: { type: 'line', point: true },
    encoding: {
      x: { field: 'rows', type: 'quantitative', title: 'rows in pulse', scale: { type: 'log' } },
      y: { field: 'perSecond', type: 'quantitative', title: 'rows per second' },
      color: { field: 'what', type: 'nominal', title: null },
    },
  });

  if (optionB) {
    const a = largest.heartbeats;
    await render('option-a-vs-b.svg', {
      ...base,
      title: {
        text: `Option A (PostgreSQL, ${rowsLabel(largest.rows)}) beside Option B (Redis ${optionB.redisVersion}, ${optionB.keys.toLocaleString('en-US')} keys)`,
        subtitle,
      },
      data: {
        values: [
          {
            measure: 'server CPU per single heartbeat (µs)',
            option: 'A',
            value: a.groupCommit.dbCpuUsPerId,
          },
          {
            measure: 'server CPU per single heartbeat (µs)',
            option: 'B',
            value: optionB.singleHeartbeats.cpuUsPerOperation,
          },
          {
            measure: 'server CPU per batched heartbeat (µs)',
            option: 'A',
            value: a.gatewayBatch.dbCpuUsPerId,
          },
          {
            measure: 'server CPU per batched heartbeat (µs)',
            option: 'B',
            value: optionB.gatewayBatches.cpuUsPerOperation,
          },
          {
            measure: 'bytes per online user',
            option: 'A',
            value: largest.storage.atRest.bytesPerRow.total,
          },
          { measure: 'bytes per online user', option: 'B', value: optionB.memory.bytesPerKey },
          {
            measure: 'server CPU per expired user (µs)',
            option: 'A',
            value: largest.sweep.dbCpuUsPerDeletedRow,
          },
          {
            measure: 'server CPU per expired user (µs)',
            option: 'B',
            value: optionB.expiry.cpuUsPerExpiredKey,
          },
        ],
      },
      facet: { field: 'measure', type: 'nominal', title: null, sort: null },
      columns: 2,
      spec: {
        width: 160,
        height: 120,
        layer: [
          { mark: { type: 'bar' } },
          { mark: { type: 'text', dy: -6, fontSize: 10 }, encoding: { text: { field: 'value' } } },
        ],
        encoding: {
          x: { field: 'option', type: 'nominal', title: null, axis: { labelAngle: 0 } },
          y: { field: 'value', type: 'quantitative', title: null },
          color: { field: 'option', type: 'nominal', legend: null },
        },
      },
      resolve: { scale: { y: 'independent' } },
    });
  }
}

await main();

import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { expect } from 'chai';
import {
  capacity,
  streamConstants,
  type CapacityInputs,
  type CitusFigures,
  type StreamFigures,
} from '../capacity-model.ts';
import type { ScaleResults } from '../scale.ts';

const results = JSON.parse(
  readFileSync(new URL('../results/scale.json', import.meta.url), 'utf8'),
) as ScaleResults;

const inputs: CapacityInputs = {
  users: 1e9,
  online: 0.1,
  interval: 15,
  gatewayShare: 0.5,
  session: 1800,
  utilisation: 0.5,
  dbServerCores: 64,
  dbServerMemoryGb: 512,
};

describe('capacity model (bench/capacity-model.ts on the committed bench/results/scale.json)', () => {
  const largest = results.sizes.find((s) => s.rows === 10_000_000)!;
  const value = (report: ReturnType<typeof capacity>, quantity: string) => {
    const line = report.lines.find((l) => l.quantity === quantity);
    if (!line) throw new Error(`no line ${quantity}`);
    return line.value;
  };

  it('rests on a benchmark of 1,000,000 and 10,000,000 rows, named with its machine', () => {
    expect(results.sizes.map((s) => s.rows)).to.include.members([1_000_000, 10_000_000]);
    const report = capacity(inputs, results);
    expect(report.machine)
      .to.equal(results.machine.label)
      .and.match(/PostgreSQL \d+/);
    for (const constant of report.constants) {
      expect(constant.source).to.equal('bench:scale, 10,000,000 rows');
      expect(constant.value, constant.name).to.be.a('number').and.greaterThan(0);
    }
  });

  it('follows the formulas in docs/capacity.md', () => {
    const report = capacity(inputs, results);
    const h = largest.heartbeats;
    const rows = 1e8;
    const perSecond = rows / 15;
    expect(value(report, 'rows in pulse (users online)')).to.equal(rows);
    expect(value(report, 'table + primary key')).to.be.closeTo(
      (rows * largest.storage.afterLoad.bytesPerRow.total) / 1e9,
      1e-9,
    );
    expect(value(report, 'heartbeats per second')).to.be.closeTo(perSecond, 1e-6);
    expect(value(report, 'gateway batches of 1,000 per second')).to.be.closeTo(
      perSecond / 2 / 1000,
      1e-6,
    );
    const dbCores =
      ((perSecond / 2) * (h.groupCommit.dbCpuUsPerId + h.gatewayBatch.dbCpuUsPerId)) / 1e6;
    expect(value(report, 'PostgreSQL cores for heartbeats')).to.be.closeTo(dbCores, 1e-6);
    const sweepCores = ((rows / 1800) * largest.sweep.dbCpuUsPerDeletedRow) / 1e6;
    expect(value(report, 'PostgreSQL cores at the utilisation target')).to.be.closeTo(
      (dbCores + sweepCores) / 0.5,
      1e-6,
    );
    const apiCores =
      ((perSecond / 2) * (h.groupCommit.apiCpuUsPerId + h.gatewayBatch.apiCpuUsPerId)) / 1e6;
    expect(value(report, 'API processes (one core each)')).to.equal(Math.ceil(apiCores / 0.5));
    expect(report.oneServer.maxUsersByCpu).to.be.closeTo(
      (1e9 * 64 * 0.5) / (dbCores + sweepCores),
      1,
    );
    expect(report.seed.claimGb).to.equal(8);
  });

  it('doubles what depends on users when the users double, and nothing measured changes', () => {
    const one = capacity(inputs, results);
    const two = capacity({ ...inputs, users: 2e9 }, results);
    for (const quantity of [
      'rows in pulse (users online)',
      'heartbeats per second',
      'PostgreSQL cores for heartbeats',
    ]) {
      expect(value(two, quantity)).to.be.closeTo(2 * value(one, quantity), 1e-6);
    }
    expect(two.constants).to.deep.equal(one.constants);
  });

  it('reads the Citus figures when given, and says they are pending otherwise', () => {
    expect(capacity(inputs, results).citus.status).to.equal('pending');
    const citus: CitusFigures = {
      machine: { label: 'test machine' },
      coordinatorCpuUsPerHeartbeat: { groupCommit: 10, gatewayBatch: 2 },
      workerCpuUsPerHeartbeat: { groupCommit: 40, gatewayBatch: 8 },
    };
    const report = capacity(inputs, results, citus);
    if (report.citus.status !== 'measured') throw new Error('Citus figures ignored');
    const perSecond = 1e8 / 15;
    expect(report.citus.lines[1]!.value).to.be.closeTo(
      ((perSecond / 2) * (40 + 8)) / 1e6 / 0.5,
      1e-6,
    );
  });

  it('npm run capacity prints the model for its flags and refuses a bad one', function () {
    this.timeout(30_000);
    const run = (args: string[]) =>
      spawnSync(process.execPath, ['--import', 'tsx', 'bench/capacity.ts', ...args], {
        encoding: 'utf8',
      });
    const ok = run(['--users', '1e9', '--online', '0.1', '--interval', '15']);
    expect(ok.status, ok.stderr).to.equal(0);
    expect(ok.stdout).to.include('100,000,000 rows').and.include(results.machine.label);
    const bad = run(['--online', '2']);
    expect(bad.status).to.equal(2);
    expect(bad.stderr).to.include('--online must be a number from');
  });
});

describe('capacity model: streams and the change log (bench/results/stream.json)', () => {
  const figures: StreamFigures = {
    measuredAt: '2026-12-05T00:00:00Z',
    machine: 'test',
    sizes: { streamCount: 4000, onlineCount: 100_000 },
    phases: [
      {
        apis: 4,
        streams: 4000,
        dbCores: 0.05,
        apiCores: 0.12,
        apiRssMb: 200,
        logReadsPerSecond: 12,
        detectorCheckedPerSecond: 5000,
      },
      {
        apis: 2,
        streams: 4000,
        dbCores: 0.04,
        apiCores: 0.08,
        apiRssMb: 300,
        logReadsPerSecond: 8,
        detectorCheckedPerSecond: 5000,
      },
    ],
  };

  it('splits the database CPU into log reads and detector checks from the two phases', () => {
    const k = streamConstants(figures);
    expect(k.dbUsPerLogRead).to.be.closeTo(((0.05 - 0.04) / 4) * 1e6, 1e-6);
    expect(k.dbUsPerDetectorCheck).to.be.closeTo(((0.04 - 8 * 0.0025) / 5000) * 1e6, 1e-6);
    expect(k.apiMbPerStream).to.be.closeTo((300 * 2) / 4000, 1e-9);
  });

  it('adds the detector, the log reads and the stream processes', () => {
    const report = capacity(
      { ...inputs, streams: 25_000, threshold: 20 },
      results,
      undefined,
      figures,
    );
    const line = (quantity: string) => report.lines.find((l) => l.quantity === quantity)!.value;
    const k = streamConstants(figures);
    expect(line('PostgreSQL cores: offline detector')).to.be.closeTo(
      ((1e8 / 20) * k.dbUsPerDetectorCheck) / 1e6,
      1e-9,
    );
    expect(line('API processes holding streams')).to.equal(3);
    expect(line('PostgreSQL cores: change log reads')).to.be.closeTo(
      ((3 * 2 + 4) * k.dbUsPerLogRead) / 1e6,
      1e-9,
    );
    expect(capacity(inputs, results).lines.some((l) => l.quantity.includes('detector'))).to.equal(
      false,
    );
  });
});

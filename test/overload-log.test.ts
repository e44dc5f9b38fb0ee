import { Writable } from 'node:stream';
import { expect } from 'chai';
import { waitFor } from './support/entry-points.ts';
import { OverloadLog } from '../api/edge/overload-log.ts';
import { createLogger } from '../lib/infra/logger.ts';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

interface Line {
  level: number;
  msg: string;
  refused?: number;
  inFlight?: number;
  seconds?: number;
}

function capture() {
  const lines: Line[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString().split('\n').filter(Boolean)) {
        lines.push(JSON.parse(line) as Line);
      }
      done();
    },
  });
  return { lines, logger: createLogger('pulse-api', 'info', sink) };
}

describe('the overload log', () => {
  let log: OverloadLog | undefined;
  afterEach(() => log?.close());

  it('says it is refusing once, then counts per interval, then says once that it is over and runs onEnd', async () => {
    const { lines, logger } = capture();
    let started = 0;
    let ended = 0;
    log = new OverloadLog({
      logger,
      inFlight: () => 7,
      summaryIntervalMs: 100,
      quietMs: 1_000,
      onStart: () => (started += 1),
      onEnd: () => (ended += 1),
    });
    // Refusing for 600 ms, far more often than quietMs: one episode.
    const since = performance.now();
    while (performance.now() - since < 600) {
      log.refused('in_flight');
      await sleep(20);
    }
    const refused = lines.filter((l) => l.msg.startsWith('overloaded'));
    expect(refused[0]).to.include({ msg: 'overloaded: refusing requests with 503', inFlight: 7 });
    const summaries = refused.slice(1);
    expect(summaries.length).to.be.at.least(2);
    for (const summary of summaries) expect(summary.refused).to.be.above(0);
    expect(lines.some((l) => l.msg === 'overload over')).to.equal(false);
    expect([started, ended]).to.deep.equal([1, 0]);

    await waitFor('the end line', () => lines.some((l) => l.msg === 'overload over'));
    const over = lines.filter((l) => l.msg === 'overload over');
    const total = summaries.reduce((sum, l) => sum + l.refused!, 1);
    expect(over[0]!.refused).to.be.at.least(total); // the count since the last summary too
    expect(over[0]!.seconds).to.be.at.least(0.5);
    expect(ended).to.equal(1);
    await sleep(300);
    expect(lines.filter((l) => l.msg === 'overload over')).to.have.length(1);

    // A new refusal opens a new episode with its own first line.
    log.refused('queue_wait');
    expect(lines.filter((l) => l.msg === 'overloaded: refusing requests with 503')).to.have.length(
      2,
    );
    expect(started).to.equal(2);
  });

  it('ends nothing and logs nothing more once closed', async () => {
    const { lines, logger } = capture();
    let ended = 0;
    log = new OverloadLog({
      logger,
      inFlight: () => 0,
      summaryIntervalMs: 50,
      quietMs: 100,
      onEnd: () => (ended += 1),
    });
    log.refused('in_flight');
    log.refused('in_flight');
    log.close();
    log.refused('in_flight'); // a refusal still on its way while the process stops
    await sleep(300);
    expect(lines.map((l) => l.msg)).to.deep.equal(['overloaded: refusing requests with 503']);
    expect(ended).to.equal(0);
  });

  it('keeps refusing and ending the episode when a hook throws, and logs the error', async () => {
    const { lines, logger } = capture();
    log = new OverloadLog({
      logger,
      inFlight: () => 0,
      quietMs: 50,
      onStart: () => {
        throw new Error('start hook broke');
      },
      onEnd: () => {
        throw new Error('end hook broke');
      },
    });
    log.refused('in_flight');
    log.refused('in_flight');
    await waitFor('four lines', () => lines.length === 4);
    expect(lines.map((l) => l.msg)).to.deep.equal([
      'overloaded: refusing requests with 503',
      'overload hook failed',
      'overload over',
      'overload hook failed',
    ]);
    expect(lines.filter((l) => l.msg === 'overload over')[0]!.refused).to.equal(2);
  });
});

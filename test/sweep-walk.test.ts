import { expect } from 'chai';
import { KeyRangeWalk, TARGET_BATCH_MS } from '../sweeper/sweep-walk.ts';

describe('key-range sweep walk (Citus)', () => {
  const options = { batchSize: 1000, olderThanSeconds: 30 };

  it('starts with ranges sized to hold about batchSize rows', () => {
    // 50,000 rows spread over ids 1..1,000,000: 1,000 rows per 20,000 ids.
    const walk = new KeyRangeWalk({ min: '1', max: '1000000', rows: 50_000 }, options);
    expect(walk.rangeWidth).to.equal(20_000n);
    expect(walk.finished).to.equal(false);
  });

  it('shrinks after a slow batch and grows after a fast one, at most by half or double, within bounds', () => {
    const walk = new KeyRangeWalk({ min: '1', max: '1000000', rows: 50_000 }, options);
    walk.observe(TARGET_BATCH_MS * 10);
    expect(walk.rangeWidth).to.equal(10_000n);
    walk.observe(TARGET_BATCH_MS * 4);
    expect(walk.rangeWidth).to.equal(5_000n);
    walk.observe(TARGET_BATCH_MS / 1.25);
    expect(walk.rangeWidth).to.equal(6_250n);
    for (let i = 0; i < 20; i += 1) walk.observe(TARGET_BATCH_MS * 100);
    expect(walk.rangeWidth).to.equal(1_250n); // never below 1/16 of the first size
    for (let i = 0; i < 20; i += 1) walk.observe(1);
    expect(walk.rangeWidth).to.equal(160_000n); // never above 8 times the first size
  });

  it('never makes a range wider than the span of ids, and handles bigint ids beyond 2^53', () => {
    const small = new KeyRangeWalk({ min: '10', max: '19', rows: 10 }, options);
    expect(small.rangeWidth).to.equal(10n);
    const huge = new KeyRangeWalk(
      { min: '9007199254740993', max: '9223372036854775807', rows: 2 },
      options,
    );
    expect(huge.rangeWidth).to.equal(9223372036854775807n - 9007199254740993n + 1n);
  });
});

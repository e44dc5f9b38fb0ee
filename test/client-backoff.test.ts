import { expect } from 'chai';
import { Backoff, parseRetryAfter } from '../client/src/backoff.ts';

describe('client: backoff', () => {
  it('draws each delay uniformly below a window that doubles up to the cap (full jitter)', () => {
    const top = new Backoff({ initialMs: 100, maxMs: 1000 }, () => 0.999999);
    expect(Array.from({ length: 6 }, () => top.next())).to.deep.equal([
      99, 199, 399, 799, 999, 999,
    ]);
    const bottom = new Backoff({ initialMs: 100, maxMs: 1000 }, () => 0);
    expect(Array.from({ length: 3 }, () => bottom.next())).to.deep.equal([0, 0, 0]);
  });

  it('spreads a crowd of clients over the whole window instead of one instant', () => {
    const delays = Array.from({ length: 2000 }, () =>
      new Backoff({ initialMs: 1000, maxMs: 30_000 }).next(),
    );
    const buckets = [0, 0, 0, 0];
    for (const d of delays) buckets[Math.floor(d / 250)]! += 1;
    for (const count of buckets) expect(count).to.be.within(400, 600);
  });

  it('waits at least Retry-After, with the jitter on top', () => {
    const backoff = new Backoff({ initialMs: 100, maxMs: 1000 }, () => 0.5);
    expect(backoff.next(4000)).to.equal(4050);
    expect(backoff.next(4000)).to.equal(4100);
  });

  it('starts from the server hint and again from the start after reset', () => {
    const backoff = new Backoff({ initialMs: 100, maxMs: 60_000 }, () => 0.5);
    expect(backoff.next(undefined, 3000)).to.equal(1500);
    expect(backoff.next(undefined, 3000)).to.equal(3000);
    backoff.reset();
    expect(backoff.attempts).to.equal(0);
    expect(backoff.next()).to.equal(50);
  });

  it('reads Retry-After as seconds or an HTTP date', () => {
    const now = Date.parse('2026-11-28T08:00:00Z');
    expect(parseRetryAfter('3', now)).to.equal(3000);
    expect(parseRetryAfter(' 0 ', now)).to.equal(0);
    expect(parseRetryAfter('Sat, 28 Nov 2026 08:00:05 GMT', now)).to.equal(5000);
    expect(parseRetryAfter('Sat, 28 Nov 2026 07:00:00 GMT', now)).to.equal(0);
    expect(parseRetryAfter('soon', now)).to.equal(undefined);
    expect(parseRetryAfter(null, now)).to.equal(undefined);
    expect(parseRetryAfter('999999999', now)).to.equal(86_400_000);
  });
});

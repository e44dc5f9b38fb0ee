import { runInNewContext } from 'node:vm';
import { expect } from 'chai';
import { heapGrowthRelease, releaseHeap } from '../api/edge/heap-release.ts';

describe('releaseHeap', () => {
  it('gives a grown heap back: the garbage is collected and the pages it left are released', async () => {
    let garbage: { id: number; name: string }[] | undefined = [];
    for (let i = 0; i < 1_000_000; i += 1) garbage.push({ id: i, name: `user ${i}` });
    garbage = undefined;
    const before = process.memoryUsage();
    await releaseHeap(50);
    const after = process.memoryUsage();
    // About 90 MB of objects: without the collections neither figure moves.
    expect(before.heapUsed - after.heapUsed).to.be.above(40 * 1024 * 1024);
    expect(before.heapTotal - after.heapTotal).to.be.above(40 * 1024 * 1024);
  });

  it('does not leave `gc` to the rest of the process', async () => {
    await releaseHeap(0);
    expect((globalThis as { gc?: unknown }).gc).to.equal(undefined);
    expect(runInNewContext('typeof gc')).to.equal('undefined'); // the flag was unset again
  });

  it('after an episode, releases only if the heap grew by the threshold since it began', async () => {
    const makeGarbage = () => {
      let garbage: { id: number; name: string }[] | undefined = [];
      for (let i = 0; i < 1_000_000; i += 1) garbage.push({ id: i, name: `user ${i}` });
      garbage = undefined;
    };
    await releaseHeap(0);
    const episode = heapGrowthRelease(32 * 1024 * 1024);
    episode.started();
    makeGarbage(); // grows the heap by about 90 MB
    const grown = process.memoryUsage().heapUsed;
    expect(await episode.ended()).to.equal(true);
    expect(grown - process.memoryUsage().heapUsed).to.be.above(40 * 1024 * 1024);

    makeGarbage();
    episode.started(); // began after the heap grew: nothing grew during it
    const before = process.memoryUsage().heapUsed;
    expect(await episode.ended()).to.equal(false);
    expect(Math.abs(before - process.memoryUsage().heapUsed)).to.be.below(8 * 1024 * 1024);
  });
});

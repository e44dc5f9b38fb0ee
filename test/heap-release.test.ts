import { expect } from 'chai';
import {
  exposedCollector,
  heapGrowthRelease,
  releaseHeap,
  type FullCollection,
} from '../api/edge/heap-release.ts';
import { startApi } from './support/entry-points.ts';
import { createTestDatabase, type TestDatabase } from './support/database.ts';

/** The test process runs with --expose-gc (.mocharc.json), as `npm run api` does. */
const collect = (): FullCollection => {
  const gc = exposedCollector();
  if (gc === undefined) throw new Error('mocha must run with --expose-gc (.mocharc.json)');
  return gc;
};

const makeGarbage = () => {
  let garbage: { id: number; name: string }[] | undefined = [];
  for (let i = 0; i < 1_000_000; i += 1) garbage.push({ id: i, name: `user ${i}` });
  garbage = undefined;
};

describe('releaseHeap', () => {
  it('gives a grown heap back: the garbage is collected and the pages it left are released', async () => {
    makeGarbage();
    const before = process.memoryUsage();
    await releaseHeap(collect(), 50);
    const after = process.memoryUsage();
    // About 90 MB of objects: without the collections neither figure moves.
    expect(before.heapUsed - after.heapUsed).to.be.above(40 * 1024 * 1024);
    expect(before.heapTotal - after.heapTotal).to.be.above(40 * 1024 * 1024);
  });

  it('after an episode, releases only if the heap grew by the threshold since it began', async () => {
    await releaseHeap(collect(), 0);
    const episode = heapGrowthRelease(collect(), 32 * 1024 * 1024);
    episode.started();
    makeGarbage(); // grows the heap by about 90 MB
    const grown = process.memoryUsage().heapUsed;
    expect(await episode.ended()).to.equal(true);
    expect(grown - process.memoryUsage().heapUsed).to.be.above(40 * 1024 * 1024);

    makeGarbage();
    episode.started(); // began after the heap grew: nothing grew during it
    let collections = 0;
    const counted = heapGrowthRelease(() => (collections += 1), 32 * 1024 * 1024);
    counted.started();
    expect(await counted.ended()).to.equal(false);
    expect(collections).to.equal(0);
  });
});

describe('the API without --expose-gc', () => {
  let database: TestDatabase;
  before(async () => {
    database = await createTestDatabase();
  });
  after(async () => {
    await database.drop();
  });

  it('warns once that it keeps a flood heap, and serves', async () => {
    const { api, baseUrl } = await startApi({ DATABASE_URL: database.url }, { nodeOptions: [] });
    expect((await fetch(`${baseUrl}/status/1`)).status).to.equal(200);
    const warnings = api.logLines().filter((line) => String(line.msg).includes('--expose-gc'));
    expect(warnings).to.have.length(1);
    await api.stop();
  });

  it('says nothing when HEAP_RELEASE_AFTER_OVERLOAD=false', async () => {
    const { api, baseUrl } = await startApi(
      { DATABASE_URL: database.url, HEAP_RELEASE_AFTER_OVERLOAD: 'false' },
      { nodeOptions: [] },
    );
    expect((await fetch(`${baseUrl}/status/1`)).status).to.equal(200);
    expect(api.logLines().filter((line) => String(line.msg).includes('--expose-gc'))).to.deep.equal(
      [],
    );
    await api.stop();
  });

  it('is started with --expose-gc by npm run api and the Dockerfile, and says nothing then', async () => {
    const { api } = await startApi({ DATABASE_URL: database.url });
    expect(api.logLines().filter((line) => String(line.msg).includes('--expose-gc'))).to.deep.equal(
      [],
    );
    await api.stop();
  });
});

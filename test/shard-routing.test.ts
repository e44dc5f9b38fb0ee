import { expect } from 'chai';
import fc from 'fast-check';
import { sql } from 'kysely';
import { findOnlineUserIds } from '../lib/store/pulse-store.ts';
import {
  citusHashOfBigint,
  groupIdsByShard,
  ShardRouter,
  type ShardRange,
} from '../lib/citus/shard-routing.ts';
import { createTestDatabase, type TestDatabase } from './support/database.ts';

/** `count` equal hash ranges over the int32 space, as Citus creates them. */
function evenRanges(count: number): ShardRange[] {
  const width = 2 ** 32 / count;
  return Array.from({ length: count }, (_, i) => ({
    shardId: String(102008 + i),
    min: Math.ceil(-(2 ** 31) + i * width),
    max: i === count - 1 ? 2 ** 31 - 1 : Math.ceil(-(2 ** 31) + (i + 1) * width) - 1,
  }));
}

describe('shard routing', () => {
  let database: TestDatabase;
  before(async () => {
    database = await createTestDatabase();
  });
  after(async () => {
    await database.drop();
  });

  it("hashes a bigint exactly as PostgreSQL's hashint8 (what Citus places rows by)", async () => {
    const edges = [0, 1, -1, 2, 42, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 32 + 1];
    const ids = [
      ...edges,
      ...edges.map((n) => -n),
      Number.MAX_SAFE_INTEGER,
      -Number.MAX_SAFE_INTEGER,
      ...fc.sample(fc.maxSafeInteger(), { numRuns: 2000, seed: 15 }),
    ];
    const { rows } = await sql<{ hash: number }>`
      SELECT hashint8(id) AS hash FROM unnest(${ids.map(String)}::bigint[]) WITH ORDINALITY AS t(id, n)
      ORDER BY n`.execute(database.db);
    expect(ids.map((id) => citusHashOfBigint(id))).to.deep.equal(rows.map((r) => r.hash));
  });

  it('splits ids into one group per shard, each id in the shard whose range holds its hash', () => {
    const ranges = evenRanges(32);
    const ids = Array.from({ length: 1000 }, (_, i) => i * 7919 + 1);
    const groups = groupIdsByShard(ids, ranges);
    expect(groups.length).to.equal(32);
    expect(groups.flat().sort((a, b) => a - b)).to.deep.equal(ids);
    for (const group of groups) {
      const shards = new Set(
        group.map((id) => {
          const hash = citusHashOfBigint(id);
          return ranges.findIndex((r) => r.min <= hash && hash <= r.max);
        }),
      );
      expect(shards.size).to.equal(1);
    }
  });

  it('leaves plain PostgreSQL to one statement, and reads and writes answer as before', async () => {
    for (let id = 1; id <= 40; id += 1) await database.putRow(id, id % 3 === 0 ? 60 : 1);
    const router = new ShardRouter(database.db);
    expect(await router.shardRanges()).to.deep.equal([]);
    const ids = Array.from({ length: 50 }, (_, i) => i + 1);
    expect(await router.group(ids)).to.equal(null);
    const online = await findOnlineUserIds(database.db, ids, router);
    expect([...online].sort((a, b) => a - b)).to.deep.equal(
      ids.filter((id) => id <= 40 && id % 3 !== 0),
    );
  });
});

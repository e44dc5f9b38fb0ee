import { expect } from 'chai';
import { CoalescingStatusReader } from '../api/status-reader.ts';
import { openDatabase } from '../lib/db.ts';
import { startTestApp } from './support/app.ts';
import { createTestDatabase, silentLogger, type TestDatabase } from './support/database.ts';
import { startTcpProxy } from './support/tcp-proxy.ts';

describe('coalesced status reads', () => {
  let database: TestDatabase;
  before(async () => {
    database = await createTestDatabase();
    for (let id = 1; id <= 100; id += 1) await database.putRow(id, id % 2 ? 1 : 60); // odd online
  });
  after(async () => {
    await database.drop();
  });

  it('answers concurrent lookups correctly with one query per event-loop turn', async () => {
    const queries: number[] = [];
    const reader = new CoalescingStatusReader(database.db, 20, 1000, (ids) => queries.push(ids));
    const ids = [...Array.from({ length: 120 }, (_, i) => i + 1), 7, 8, 7]; // 101-120 have no row
    const answers = await Promise.all(ids.map((id) => reader.isOnline(id)));
    expect(answers).to.deep.equal(ids.map((id) => id <= 100 && id % 2 === 1));
    expect(queries).to.deep.equal([120]); // duplicates asked once
  });

  it('splits a turn with more than maxIds lookups into several queries', async () => {
    const queries: number[] = [];
    const reader = new CoalescingStatusReader(database.db, 20, 50, (ids) => queries.push(ids));
    const answers = await Promise.all(
      Array.from({ length: 120 }, (_, i) => reader.isOnline(i + 1)),
    );
    expect(answers.filter(Boolean)).to.have.length(50);
    expect(queries).to.deep.equal([50, 50, 20]);
  });

  it('rejects every lookup of a failed query, and the same reader works again next turn', async () => {
    const target = new URL(database.url);
    const proxy = await startTcpProxy({
      targetHost: target.hostname,
      targetPort: Number(target.port || 5432),
    });
    const behindProxy = openDatabase({
      connectionString: proxy.rewriteUrl(database.url),
      poolMax: 1,
      applicationName: 'test',
      logger: silentLogger,
    });
    try {
      const queries: number[] = [];
      const reader = new CoalescingStatusReader(behindProxy.db, 20, 1000, (ids) =>
        queries.push(ids),
      );
      proxy.refuse(); // the database cannot be reached
      const results = await Promise.allSettled([
        reader.isOnline(1),
        reader.isOnline(2),
        reader.isOnline(1),
      ]);
      expect(results.map((r) => r.status)).to.deep.equal(['rejected', 'rejected', 'rejected']);
      proxy.accept();
      expect(await Promise.all([reader.isOnline(1), reader.isOnline(2)])).to.deep.equal([
        true,
        false,
      ]);
      expect(queries).to.deep.equal([2, 2]); // one failed query, then one that answered
    } finally {
      await behindProxy.close();
      await proxy.close();
    }
  });

  for (const coalescing of ['true', 'false']) {
    it(`GET /status/{id} answers the same with STATUS_READ_COALESCING=${coalescing}`, async () => {
      const app = await startTestApp(database, { STATUS_READ_COALESCING: coalescing });
      try {
        const bodies = await Promise.all(
          [1, 2, 3, 101, 1].map(async (id) => (await app.get(`/status/${id}`)).json()),
        );
        expect(bodies).to.deep.equal([
          { user_id: 1, is_online: true },
          { user_id: 2, is_online: false },
          { user_id: 3, is_online: true },
          { user_id: 101, is_online: false },
          { user_id: 1, is_online: true },
        ]);
      } finally {
        await app.close();
      }
    });
  }
});

import { expect } from 'chai';
import { CoalescingStatusReader } from '../api/read/status-reader.ts';
import { openDatabase } from '../lib/infra/db.ts';
import { startTestApp } from './support/app.ts';
import {
  createTestDatabase,
  lastHeartbeats,
  silentLogger,
  type TestDatabase,
} from './support/database.ts';
import { startTcpProxy } from './support/tcp-proxy.ts';

/** The devices summary of a user online on one device that named none, and of anyone offline. */
const ONE_DEVICE = { count: 1, kinds: [] };
const NO_DEVICES = { count: 0, kinds: [] };

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
    const reader = new CoalescingStatusReader(database.db, 1000, (ids) => queries.push(ids));
    const ids = [...Array.from({ length: 120 }, (_, i) => i + 1), 7, 8, 7]; // 101-120 have no row
    const answers = await Promise.all(ids.map((id) => reader.read(id)));
    expect(answers.map((a) => a.online)).to.deep.equal(ids.map((id) => id <= 100 && id % 2 === 1));
    expect(answers.map((a) => a.lastSeen === null)).to.deep.equal(ids.map((id) => id > 100));
    expect(queries).to.deep.equal([120]); // duplicates asked once
  });

  it('splits a turn with more than maxIds lookups into several queries', async () => {
    const queries: number[] = [];
    const reader = new CoalescingStatusReader(database.db, 50, (ids) => queries.push(ids));
    const answers = await Promise.all(Array.from({ length: 120 }, (_, i) => reader.read(i + 1)));
    expect(answers.filter((a) => a.online)).to.have.length(50);
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
      const reader = new CoalescingStatusReader(behindProxy.db, 1000, (ids) => queries.push(ids));
      proxy.refuse(); // the database cannot be reached
      const results = await Promise.allSettled([reader.read(1), reader.read(2), reader.read(1)]);
      expect(results.map((r) => r.status)).to.deep.equal(['rejected', 'rejected', 'rejected']);
      proxy.accept();
      const again = await Promise.all([reader.read(1), reader.read(2)]);
      expect(again.map((presence) => presence.online)).to.deep.equal([true, false]);
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
        const lastSeen = await lastHeartbeats(database, [1, 2, 3]);
        expect(bodies).to.deep.equal([
          { user_id: 1, is_online: true, last_seen: lastSeen.get(1), devices: ONE_DEVICE },
          { user_id: 2, is_online: false, last_seen: lastSeen.get(2), devices: NO_DEVICES },
          { user_id: 3, is_online: true, last_seen: lastSeen.get(3), devices: ONE_DEVICE },
          { user_id: 101, is_online: false, last_seen: null, devices: NO_DEVICES },
          { user_id: 1, is_online: true, last_seen: lastSeen.get(1), devices: ONE_DEVICE },
        ]);
      } finally {
        await app.close();
      }
    });
  }
});

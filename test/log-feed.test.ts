import { expect } from 'chai';
import { LogPresenceFeed as PresenceFeed } from '../api/stream/log-feed.ts';
import { recordHeartbeats, setOffline, type UserStatus } from '../lib/store/pulse-store.ts';
import { openDatabase } from '../lib/infra/db.ts';
import { createTestDatabase, silentLogger, type TestDatabase } from './support/database.ts';
import { startTcpProxy } from './support/tcp-proxy.ts';
import { waitFor } from './support/entry-points.ts';

// The index of watchers is tested for both feeds in change-feed.test.ts.
describe('LogPresenceFeed: reading the change log', () => {
  let database: TestDatabase;
  before(async () => {
    database = await createTestDatabase();
  });
  after(() => database.drop());

  const changes = (received: UserStatus[]) =>
    received.map((row) => `${row.user_id} ${row.is_online ? 'online' : 'offline'}`);

  it('delivers an online and an offline that both happen between two reads, in order', async () => {
    const feed = new PresenceFeed(database.db, { intervalMs: 300 });
    try {
      const received: UserStatus[] = [];
      await feed.subscribe([21], (rows) => received.push(...rows));
      await recordHeartbeats(database.db, [21]); // goes live with this one (not in its snapshot)
      await waitFor('the first online', () => received.length === 1);
      await recordHeartbeats(database.db, [21]); // already online: nothing
      await setOffline(database.db, [21]);
      await recordHeartbeats(database.db, [21]);
      await setOffline(database.db, [21]);
      await waitFor('the three transitions after it', () => received.length === 4);
      await new Promise((resolve) => setTimeout(resolve, 700)); // two more reads: nothing more
      expect(changes(received)).to.deep.equal([
        '21 online',
        '21 offline',
        '21 online',
        '21 offline',
      ]);
    } finally {
      await feed.close();
    }
  });

  it('loses nothing while the database is unreachable: the next read takes up from its cursor', async () => {
    const target = new URL(database.url);
    const proxy = await startTcpProxy({
      targetHost: target.hostname,
      targetPort: Number(target.port),
    });
    const behindProxy = openDatabase({
      connectionString: proxy.rewriteUrl(database.url),
      poolMax: 2,
      applicationName: 'test',
      logger: silentLogger,
    });
    const errors: unknown[] = [];
    const feed = new PresenceFeed(
      behindProxy.db,
      { intervalMs: 100 },
      { onPollError: (error) => errors.push(error) },
    );
    try {
      const received: UserStatus[] = [];
      await feed.subscribe([31, 32], (rows) => received.push(...rows));
      await recordHeartbeats(database.db, [31]);
      await waitFor('the change before the outage', () => received.length === 1);

      proxy.refuse();
      proxy.dropConnections();
      await waitFor('reads failing', () => errors.length >= 2);
      // Written on a connection of the test's own while the feed cannot read.
      await recordHeartbeats(database.db, [32]);
      await setOffline(database.db, [31]);
      proxy.accept();
      await waitFor('the changes made during the outage', () => received.length === 3, {
        timeoutMs: 10_000,
      });
      await new Promise((resolve) => setTimeout(resolve, 400)); // a few more reads
      expect(changes(received)).to.deep.equal(['31 online', '32 online', '31 offline']);
    } finally {
      await feed.close();
      await behindProxy.close();
      await proxy.close();
    }
  });
});

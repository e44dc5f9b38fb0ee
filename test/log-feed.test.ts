import { expect } from 'chai';
import { LogPresenceFeed as PresenceFeed, type FeedSubscription } from '../api/stream/log-feed.ts';
import { recordHeartbeats, setOffline, type UserStatus } from '../lib/store/pulse-store.ts';
import { openDatabase } from '../lib/infra/db.ts';
import { createTestDatabase, silentLogger, type TestDatabase } from './support/database.ts';
import { startTcpProxy } from './support/tcp-proxy.ts';
import { waitFor } from './support/entry-points.ts';

describe('LogPresenceFeed: the index of who watches which id', () => {
  let database: TestDatabase;
  let feed: PresenceFeed;
  before(async () => {
    database = await createTestDatabase();
  });
  beforeEach(() => {
    feed = new PresenceFeed(database.db, { intervalMs: 50 });
  });
  afterEach(() => feed.close());
  after(() => database.drop());

  const subscribe = async (ids: number[]) => {
    const received: UserStatus[] = [];
    const subscription: FeedSubscription = await feed.subscribe(ids, (changes) =>
      received.push(...changes),
    );
    return { received, subscription };
  };
  const onlineIds = (received: UserStatus[]) =>
    received.filter((row) => row.is_online).map((row) => row.user_id);

  it('keeps delivering to the other watchers of an id when one of them closes, whichever it is', async () => {
    const first = await subscribe([1, 2]);
    const middle = await subscribe([2, 3]);
    const last = await subscribe([2, 1]);
    expect(feed.watchedIds).to.equal(3);
    // Let every subscriber go live before anything changes.
    await new Promise((resolve) => setTimeout(resolve, 200));

    middle.subscription.close();
    expect(feed.watchedIds, 'id 3 had no other watcher').to.equal(2);
    first.subscription.close();
    await recordHeartbeats(database.db, [1, 2, 3]);
    await waitFor('both changes on the remaining stream', () => last.received.length === 2);

    expect(onlineIds(last.received).sort()).to.deep.equal([1, 2]);
    expect(first.received, 'a closed subscriber').to.deep.equal([]);
    expect(middle.received, 'a closed subscriber').to.deep.equal([]);

    last.subscription.close();
    expect(feed.watchedIds).to.equal(0);
    await setOffline(database.db, [1, 2, 3]);
  });

  it('delivers to more streams than one delivery slice (500), each change exactly once', async () => {
    const subscribers = await Promise.all(Array.from({ length: 1_201 }, () => subscribe([11])));
    await new Promise((resolve) => setTimeout(resolve, 200));
    await recordHeartbeats(database.db, [11]);
    await waitFor('the change on every stream', () =>
      subscribers.every(({ received }) => received.length >= 1),
    );
    // One more poll: nothing is delivered twice.
    await new Promise((resolve) => setTimeout(resolve, 150));
    expect(subscribers.map(({ received }) => onlineIds(received))).to.deep.equal(
      subscribers.map(() => [11]),
    );
    for (const { subscription } of subscribers) subscription.close();
  });

  it('sends a re-subscribed id its changes again after every watcher had left', async () => {
    const before = await subscribe([7]);
    before.subscription.close();
    expect(feed.watchedIds).to.equal(0);

    const again = await subscribe([7]);
    await new Promise((resolve) => setTimeout(resolve, 200));
    await recordHeartbeats(database.db, [7]);
    await waitFor('the change of id 7', () => again.received.length === 1);
    expect(onlineIds(again.received)).to.deep.equal([7]);
    again.subscription.close();
  });
});

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

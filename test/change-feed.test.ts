import { expect } from 'chai';
import { LogPresenceFeed } from '../api/stream/log-feed.ts';
import type { ChangeFeed, FeedSubscription } from '../api/stream/change-feed.ts';
import { PollPresenceFeed } from '../api/stream/poll-feed.ts';
import { recordHeartbeats, setOffline, type UserStatus } from '../lib/store/pulse-store.ts';
import { createTestDatabase, type TestDatabase } from './support/database.ts';
import { waitFor } from './support/entry-points.ts';

// The polling feed and the change log's feed keep the same index of watchers: one set of tests.
for (const Feed of [PollPresenceFeed, LogPresenceFeed]) {
  describe(`${Feed.name}: the index of who watches which id`, () => {
    let database: TestDatabase;
    let feed: ChangeFeed;
    before(async () => {
      database = await createTestDatabase();
    });
    beforeEach(() => {
      feed = new Feed(database.db, { intervalMs: 50 });
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
}

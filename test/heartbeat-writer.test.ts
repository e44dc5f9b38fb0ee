import { expect } from 'chai';
import {
  DirectHeartbeatWriter,
  GroupCommitHeartbeatWriter,
  type FlushObserver,
  type HeartbeatWriter,
} from '../api/write/heartbeat-writer.ts';
import { startTestApp } from './support/app.ts';
import { createTestDatabase, type TestDatabase } from './support/database.ts';

describe('heartbeat writers', () => {
  let database: TestDatabase;
  beforeEach(async () => {
    database = await createTestDatabase();
  });
  afterEach(async () => {
    await database.drop();
  });

  for (const groupCommit of ['true', 'false']) {
    it(`count the duplicate ids of one request as one committed heartbeat (group commit ${groupCommit})`, async () => {
      const app = await startTestApp(database, { HEARTBEAT_GROUP_COMMIT: groupCommit });
      try {
        const accepted = async () => {
          const text = await (await app.get('/metrics')).text();
          const match = /^pulse_heartbeats_accepted_total (\d+)$/m.exec(text);
          expect(match, 'pulse_heartbeats_accepted_total in /metrics').not.to.equal(null);
          return Number(match![1]);
        };
        const before = await accepted();
        const response = await app.post('/status/update', [
          { user_id: 5 },
          { user_id: 5 },
          { user_id: 6 },
          { user_id: 5 },
        ]);
        expect(response.status).to.equal(200);
        expect((await accepted()) - before).to.equal(2);
        expect(await database.userIds()).to.deep.equal([5, 6]);
      } finally {
        await app.close();
      }
    });
  }

  const throwing: FlushObserver = {
    onFlush() {
      throw new Error('observer broke');
    },
  };
  const writers: Array<[string, () => HeartbeatWriter]> = [
    [
      'group commit',
      () =>
        new GroupCommitHeartbeatWriter(
          database.db,
          { maxBatchIds: 10, maxDelayMs: 1, maxConcurrentFlushes: 1, maxQueuedIds: 1000 },
          throwing,
        ),
    ],
    ['direct', () => new DirectHeartbeatWriter(database.db, throwing)],
  ];
  for (const [name, create] of writers) {
    it(`${name}: a throwing flush observer neither fails the heartbeat nor escapes as an unhandled rejection`, async () => {
      const unhandled: unknown[] = [];
      const onUnhandled = (reason: unknown) => unhandled.push(reason);
      process.on('unhandledRejection', onUnhandled);
      const heartbeats = create();
      try {
        await heartbeats.record([1]);
        // The queue keeps flushing after the observer threw.
        await Promise.all([heartbeats.record([2]), heartbeats.record([3, 4])]);
        await heartbeats.close();
        await new Promise((resolve) => setImmediate(resolve));
        expect(await database.userIds()).to.deep.equal([1, 2, 3, 4]);
        expect(unhandled).to.deep.equal([]);
      } finally {
        process.off('unhandledRejection', onUnhandled);
      }
    });
  }
});

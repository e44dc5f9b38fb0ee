/**
 * The change log on Citus, read node by node (lib/store/node-change-log.ts): every committed row
 * read exactly once whatever the commit order, the node that planned the write or a multi-shard
 * (two-phase) commit; live streams and the offline detector fed by it; one worker's failure
 * holding back only its own rows. Runs when CITUS_URL is set (test/support/citus.ts).
 */
import { expect } from 'chai';
import { sql } from 'kysely';
import { GroupDetectors, ownerOf } from '../lib/presence/group-detectors.ts';
import { NodeChangeLog } from '../lib/store/node-change-log.ts';
import {
  recordHeartbeats,
  updatePresenceSettings,
  type Executor,
} from '../lib/store/pulse-store.ts';
import { startTestApp, type TestApp } from './support/app.ts';
import {
  citusUrl,
  createSchema,
  idsOnWorker,
  migrate,
  onNode,
  openOn,
  waitForMetadataSync,
  workers,
  type CitusSchema,
} from './support/citus.ts';
import { silentLogger } from './support/database.ts';
import { adminQuery } from './support/server.ts';
import { SseStream } from './support/sse.ts';
import { startTcpProxy } from './support/tcp-proxy.ts';

const logEvent = (db: Executor, userId: number) =>
  sql`INSERT INTO pulse_events (user_id, online, reason, last_seen)
      VALUES (${userId}::bigint, true, 'heartbeat', now())`.execute(db);

const options = (db: CitusSchema) => ({
  connectionString: db.url,
  logger: silentLogger,
  applicationName: 'pulse-test-log',
});

async function until(check: () => boolean | Promise<boolean>, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`not within ${ms} ms`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

const usersOf = (read: { events: Array<{ userId: number }> }) =>
  read.events.map((event) => event.userId).sort((a, b) => a - b);

(citusUrl ? describe : describe.skip)(
  citusUrl
    ? 'the change log on Citus (CITUS_URL)'
    : 'the change log on Citus: SKIPPED, CITUS_URL is not set (see docs/citus.md)',
  function () {
    this.timeout(120_000);
    let db: CitusSchema;
    let a: number[];
    let b: number[];
    beforeEach(async () => {
      db = await createSchema();
      const run = await migrate(db.url);
      expect(run.code, run.out).to.equal(0);
      const [first, second] = await workers(db);
      const candidates = Array.from({ length: 200 }, (_, i) => i + 1);
      a = await idsOnWorker(db, candidates, first!);
      b = await idsOnWorker(db, candidates, second!);
    });
    afterEach(async () => {
      await db.drop();
    });

    it('reads every row once, across nodes, out-of-order commits, a two-phase commit and writes planned on a worker', async () => {
      const log = new NodeChangeLog(db.db, options(db));
      const [worker] = await workers(db);
      const viaWorker = openOn(onNode(db.url, worker!), 'pulse-test-worker-writer');
      try {
        let cursor = await log.currentCursor();
        // A transaction that stays open while later ones commit: it must be read when it commits.
        const late = await db.pool.connect();
        try {
          await late.query('BEGIN');
          await late.query(
            `INSERT INTO pulse_events (user_id, online, reason) VALUES (${a[0]}, true, 'heartbeat')`,
          );
          await logEvent(db.db, b[0]!);
          await logEvent(db.db, a[1]!);
          await logEvent(viaWorker.db, b[1]!);
          // Two workers in one transaction: committed with two-phase commit.
          await db.db.transaction().execute(async (trx) => {
            await logEvent(trx, a[2]!);
            await logEvent(trx, b[2]!);
          });
          const first = await log.readEvents(cursor);
          expect(first.failures).to.equal(undefined);
          expect(usersOf(first)).to.deep.equal(
            [b[0]!, a[1]!, b[1]!, a[2]!, b[2]!].sort((x, y) => x - y),
          );
          cursor = first.snapshot;
          await late.query('COMMIT');
        } finally {
          late.release();
        }
        const second = await log.readEvents(cursor);
        expect(usersOf(second)).to.deep.equal([a[0]!]);
        const third = await log.readEvents(second.snapshot);
        expect(third.events).to.deep.equal([]);
      } finally {
        await viaWorker.close();
        await log.close();
      }
    });

    it('feeds live streams and the offline detector: online, then offline by threshold, each once', async () => {
      let app: TestApp | undefined;
      let stream: SseStream | undefined;
      try {
        app = await startTestApp(db, {
          ONLINE_THRESHOLD_SECONDS: '2',
          OFFLINE_DETECTOR_INTERVAL_MS: '100',
          STREAM_POLL_INTERVAL_MS: '100',
        });
        const watched = [a[0]!, b[0]!];
        stream = await SseStream.open(`${app.baseUrl}/status/stream?watch=${watched.join(',')}`);
        await stream.next(); // the snapshot
        for (const id of watched) {
          expect((await app.post('/status/update', { user_id: id })).status).to.equal(200);
        }
        const seen: Array<{ user_id: number; is_online: boolean }> = [];
        while (seen.length < 4) {
          const event = await stream.next<{ user_id: number; is_online: boolean }>(10_000);
          seen.push(event.data);
        }
        const changesOf = (id: number) =>
          seen.filter((s) => s.user_id === id).map((s) => s.is_online);
        for (const id of watched) expect(changesOf(id), `user ${id}`).to.deep.equal([true, false]);
        const logged = await db.query<{ user_id: string; reason: string }>(
          `SELECT user_id::text, reason FROM pulse_events ORDER BY user_id, seq`,
        );
        expect(logged.map((row) => [Number(row.user_id), row.reason])).to.deep.equal(
          [...watched]
            .sort((x, y) => x - y)
            .flatMap((id) => [
              [id, 'heartbeat'],
              [id, 'threshold'],
            ]),
        );
      } finally {
        stream?.close();
        await app?.close();
      }
    });

    it('runs one offline detector per node group, split over processes; a killed one is taken over, each user expired once', async () => {
      await updatePresenceSettings(db.db, { onlineThresholdSeconds: 2 });
      const groups = [...(await new NodeChangeLog(db.db, options(db)).groupsHoldingLog()).keys()];
      expect(groups).to.have.length(2);
      // Two process names that rendezvous hashing gives one group each.
      let names: [string, string] = ['p0', 'p1'];
      for (let i = 1; ownerOf(groups[0]!, names) === ownerOf(groups[1]!, names); i += 1) {
        names = ['p0', `p${i + 1}`];
      }
      const logs = names.map(() => new NodeChangeLog(db.db, options(db)));
      const detectors = names.map(
        (holder, i) =>
          new GroupDetectors(db.db, logs[i]!, { intervalMs: 100, leaseTtlSeconds: 2, holder }),
      );
      try {
        for (const detector of detectors) detector.start();
        await until(() => detectors.every((d) => d.groups.length === 1 && d.leasesHeld === 1));
        expect([...detectors[0]!.groups, ...detectors[1]!.groups].sort()).to.deep.equal(groups);
        await recordHeartbeats(db.db, [a[0]!, b[0]!]);
        // The second process dies holding its lease: the first takes its group once both expire.
        await detectors[1]!.stop({ release: false });
        await until(async () => {
          const [row] = await db.query<{ n: number }>(
            `SELECT count(*)::int AS n FROM pulse_events WHERE reason = 'threshold'`,
          );
          return row!.n === 2;
        }, 20_000);
        expect(detectors[0]!.groups).to.deep.equal(groups);
        await new Promise((resolve) => setTimeout(resolve, 1_000));
        const logged = await db.query<{ user_id: string; reason: string }>(
          `SELECT user_id::text, reason FROM pulse_events ORDER BY user_id, seq`,
        );
        expect(logged.map((row) => [Number(row.user_id), row.reason])).to.deep.equal(
          [a[0]!, b[0]!]
            .sort((x, y) => x - y)
            .flatMap((id) => [
              [id, 'heartbeat'],
              [id, 'threshold'],
            ]),
        );
      } finally {
        for (const detector of detectors) await detector.stop();
        for (const log of logs) await log.close();
      }
    });

    it('a worker that cannot be reached holds back only its own rows, which come once it is back', async () => {
      const [, victim] = await workers(db);
      const proxy = await startTcpProxy({ targetHost: victim!.host, targetPort: victim!.port });
      await db.query(`SELECT citus_update_node(${victim!.nodeId}, '${proxy.host}', ${proxy.port})`);
      const log = new NodeChangeLog(db.db, options(db));
      try {
        const cursor = await log.currentCursor();
        await logEvent(db.db, a[0]!);
        await logEvent(db.db, b[0]!);
        proxy.refuse();
        proxy.dropConnections();
        const during = await log.readEvents(cursor);
        expect(usersOf(during)).to.deep.equal([a[0]!]);
        expect(during.failures).to.have.length(1);
        proxy.accept();
        const after = await log.readEvents(during.snapshot);
        expect(after.failures).to.equal(undefined);
        expect(usersOf(after)).to.deep.equal([b[0]!]);
      } finally {
        proxy.accept();
        await log.close();
        await adminQuery(
          citusUrl!,
          `SELECT citus_update_node(${victim!.nodeId}, '${victim!.host}', ${victim!.port})`,
        );
        await waitForMetadataSync(db);
        await proxy.close();
      }
    });
  },
);

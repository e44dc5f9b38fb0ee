/**
 * One user, many devices (issue 22): online while any device is fresh, no flapping when one of
 * them leaves, a devices summary in every status answer, and device ids validated.
 */
import { expect } from 'chai';
import { Kysely, PostgresDialect, sql } from 'kysely';
import type { Database } from '../lib/store/schema.ts';
import {
  recordHeartbeats,
  setDevicesOffline,
  deviceKey,
  type DeviceKind,
} from '../lib/store/pulse-store.ts';
import { startTestApp, type TestApp } from './support/app.ts';
import { createTestDatabase, type TestDatabase } from './support/database.ts';
import { waitFor } from './support/entry-points.ts';
import { expectError } from './support/http.ts';
import { SseStream } from './support/sse.ts';

interface Status {
  user_id: number;
  is_online: boolean;
  last_seen: string | null;
  devices: { count: number; kinds: string[] };
}

const beat = (db: TestDatabase['db'], userId: number, device: string | null, kind?: DeviceKind) =>
  recordHeartbeats(db, [userId], undefined, [], { ids: [device], kinds: [kind ?? null] });

describe('one user, many devices', function () {
  this.timeout(60_000);
  let database: TestDatabase;
  const apps: TestApp[] = [];
  const streams: SseStream[] = [];

  before(async () => {
    database = await createTestDatabase();
  });
  afterEach(async () => {
    for (const stream of streams.splice(0)) stream.close();
    await Promise.all(apps.splice(0).map((app) => app.close()));
  });
  after(async () => {
    await database.drop();
  });

  async function start(env: Record<string, string> = {}): Promise<TestApp> {
    const app = await startTestApp(database, env);
    apps.push(app);
    return app;
  }
  async function open(app: TestApp, query: string): Promise<SseStream> {
    const stream = await SseStream.open(`${app.baseUrl}/status/stream${query}`);
    streams.push(stream);
    expect(stream.response.status, query).to.equal(200);
    return stream;
  }
  const statusOf = async (app: TestApp, userId: number) =>
    (await (await app.get(`/status/${userId}`)).json()) as Status;
  const events = async (userId: number) => {
    const { rows } = await sql<{ online: boolean; reason: string }>`
      SELECT online, reason FROM pulse_events WHERE user_id = ${userId} ORDER BY seq`.execute(
      database.db,
    );
    return rows.map((row) => `${row.online ? 'online' : 'offline'}:${row.reason}`);
  };
  /** The user's devices as the view pulse_devices lists them, named back from their keys. */
  const NAMES = ['phone', 'laptop', 'tablet', 'a', 'b', 'c', 'x'];
  const nameOf = new Map<number, string | null>([
    [0, null],
    ...NAMES.map((name) => [deviceKey(name), name] as [number, string]),
  ]);
  const deviceRows = async (userId: number) => {
    const { rows } = await sql<{ device_key: number; device_kind: string | null; age: number }>`
      SELECT device_key, device_kind::text AS device_kind,
             round(extract(epoch FROM now() - last_hb))::int AS age
      FROM pulse_devices WHERE user_id = ${userId}
      ORDER BY last_hb DESC, device_key`.execute(database.db);
    return rows.map((row) => ({
      device: nameOf.get(row.device_key),
      kind: row.device_kind,
      age: row.age,
    }));
  };
  /** The pulse row's own columns: the newest beat's device (named back), on several or not. */
  const rowOf = async (userId: number) => {
    const { rows } = await sql<{ device_key: number; several: boolean; age: number }>`
      SELECT device_key, devices IS NOT NULL AS several,
             round(extract(epoch FROM now() - last_hb))::int AS age
      FROM pulse WHERE user_id = ${userId}`.execute(database.db);
    const row = rows[0]!;
    return {
      device: nameOf.get(row.device_key),
      several: row.several,
      age: row.age,
    };
  };
  /** Moves one device's last beat (or the whole row's, device undefined) `seconds` back. */
  const backdate = async (userId: number, seconds: number, device?: string) => {
    const back = sql`make_interval(secs => ${seconds})`;
    if (device === undefined) {
      await sql`UPDATE pulse SET last_hb = last_hb - ${back},
                  devices = ARRAY(SELECT ROW(d.device_key, d.device_kind, d.last_hb - ${back})::pulse_device
                                  FROM unnest(devices) d)
                WHERE user_id = ${userId}`.execute(database.db);
      return;
    }
    await sql`UPDATE pulse SET devices = ARRAY(
                SELECT ROW(d.device_key, d.device_kind,
                           CASE WHEN d.device_key = ${deviceKey(device)}::int4
                                THEN d.last_hb - ${back} ELSE d.last_hb END)::pulse_device
                FROM unnest(devices) d)
              WHERE user_id = ${userId}`.execute(database.db);
  };

  describe('the store', () => {
    it('keeps each user in one row: the device of a user on one, the devices array of a user on two', async () => {
      await beat(database.db, 1, 'phone', 'mobile');
      await beat(database.db, 1, 'phone', 'mobile');
      expect(await rowOf(1)).to.deep.equal({ device: 'phone', several: false, age: 0 });
      expect(await deviceRows(1)).to.deep.equal([{ device: 'phone', kind: 'mobile', age: 0 }]);
      await beat(database.db, 1, 'laptop', 'desktop');
      expect(await rowOf(1)).to.deep.equal({ device: 'laptop', several: true, age: 0 });
      expect((await deviceRows(1)).map((row) => [row.device, row.kind])).to.deep.equal([
        ['laptop', 'desktop'],
        ['phone', 'mobile'],
      ]);
      await beat(database.db, 1, 'phone', 'mobile');
      expect((await deviceRows(1)).map((row) => row.device)).to.deep.equal(['phone', 'laptop']);
      expect(await events(1)).to.deep.equal(['online:heartbeat']);

      // One device leaves: no transition, back to the row's own device.
      await setDevicesOffline(database.db, [1], ['laptop']);
      expect(await rowOf(1)).to.deep.equal({ device: 'phone', several: false, age: 0 });
      expect(await deviceRows(1)).to.deep.equal([{ device: 'phone', kind: 'mobile', age: 0 }]);
      expect(await events(1)).to.deep.equal(['online:heartbeat']);

      // The last one leaves: offline at once, logged.
      await setDevicesOffline(database.db, [1], ['phone']);
      expect(await database.ageOf(1)).to.equal(undefined);
      expect(await events(1)).to.deep.equal(['online:heartbeat', 'offline:offline']);
    });

    it('takes a user offline when a device leaves and the other one is stale, and ignores an offline of a device that is not there', async () => {
      await beat(database.db, 2, 'phone', 'mobile');
      await setDevicesOffline(database.db, [2], ['tablet']);
      expect(await database.ageOf(2)).to.be.a('number');
      await beat(database.db, 2, 'laptop', 'desktop');
      await backdate(2, 60, 'phone');
      await setDevicesOffline(database.db, [2], ['laptop']);
      expect(await database.ageOf(2)).to.equal(undefined);
      expect(await deviceRows(2)).to.deep.equal([]);
      expect(await events(2)).to.deep.equal(['online:heartbeat', 'offline:offline']);
    });

    it('keeps a user on several devices when one leaves, with last_hb the newest remaining beat', async () => {
      await beat(database.db, 3, 'a', 'web');
      await beat(database.db, 3, 'b', 'web');
      await beat(database.db, 3, 'c', 'mobile');
      await backdate(3, 5, 'b');
      await setDevicesOffline(database.db, [3], ['c']);
      const { rows } = await sql<{ newest: boolean; several: boolean }>`
        SELECT p.last_hb = (SELECT max(last_hb) FROM pulse_devices d WHERE d.user_id = 3) AS newest,
               p.devices IS NOT NULL AS several
        FROM pulse p WHERE user_id = 3`.execute(database.db);
      expect(rows).to.deep.equal([{ newest: true, several: true }]);
      expect(await deviceRows(3)).to.deep.equal([
        { device: 'a', kind: 'web', age: 0 },
        { device: 'b', kind: 'web', age: 5 },
      ]);
    });

    it('advances the beating device and last_hb of a user on several, the others staying as they were', async () => {
      await beat(database.db, 6, 'a', 'web');
      await beat(database.db, 6, 'b', 'mobile');
      // b's beat moves back 5 s each round, and only the backdating moves it.
      for (const [round, kind] of (['web', 'desktop'] as const).entries()) {
        await backdate(6, 5);
        await beat(database.db, 6, 'a', kind);
        expect(await rowOf(6)).to.deep.equal({ device: 'a', several: true, age: 0 });
        expect(await deviceRows(6)).to.deep.equal([
          { device: 'a', kind, age: 0 },
          { device: 'b', kind: 'mobile', age: 5 * (round + 1) },
        ]);
      }
    });

    it('drops a stale device at the next beat, and takes a user left with no other fresh device back to one', async () => {
      await beat(database.db, 5, 'a', 'web');
      await beat(database.db, 5, 'b', 'web');
      await beat(database.db, 5, 'c', 'mobile');
      await backdate(5, 120, 'b');
      await beat(database.db, 5, 'a', 'web');
      expect((await deviceRows(5)).map((row) => row.device)).to.deep.equal(['a', 'c']);
      await backdate(5, 120, 'c');
      await beat(database.db, 5, 'a', 'web');
      expect(await rowOf(5)).to.deep.equal({ device: 'a', several: false, age: 0 });
      expect(await deviceRows(5)).to.deep.equal([{ device: 'a', kind: 'web', age: 0 }]);
      // A second device after a stale first: it replaces it, no array.
      await backdate(5, 120);
      await beat(database.db, 5, 'b', 'mobile');
      expect(await rowOf(5)).to.deep.equal({ device: 'b', several: false, age: 0 });
    });

    it('reads a row left by 0012 for a user on several devices (device_key NULL) as one device, keeps it through a device offline it cannot place, and mends it at the next beat', async () => {
      await beat(database.db, 8, 'phone', 'mobile');
      await sql`UPDATE pulse SET device_key = NULL WHERE user_id = 8`.execute(database.db);
      const app = await start();
      expect(await statusOf(app, 8)).to.deep.include({
        is_online: true,
        devices: { count: 1, kinds: ['mobile'] },
      });
      await setDevicesOffline(database.db, [8], ['laptop']);
      expect(await database.ageOf(8)).to.be.a('number');
      await beat(database.db, 8, 'laptop', 'desktop');
      expect(await rowOf(8)).to.deep.equal({ device: 'laptop', several: false, age: 0 });
      await beat(database.db, 8, 'phone', 'mobile');
      expect((await deviceRows(8)).map((row) => row.device)).to.deep.equal(['phone', 'laptop']);
      expect(await events(8)).to.deep.equal(['online:heartbeat']);
    });

    it('keeps at most the 16 newest devices of a user, whatever ids a client invents', async () => {
      for (let device = 0; device < 20; device += 1) await beat(database.db, 7, `d${device}`);
      const { rows } = await sql<{ keys: number[] }>`
        SELECT ARRAY(SELECT d.device_key FROM unnest(devices) d) AS keys
        FROM pulse WHERE user_id = 7`.execute(database.db);
      // The 16 newest, newest first: d19 down to d4.
      const newest = Array.from({ length: 16 }, (_, i) => deviceKey(`d${19 - i}`));
      expect(rows).to.deep.equal([{ keys: newest }]);
      expect((await deviceRows(7)).length).to.equal(16);
      expect((await (await start()).get('/status/7')).status).to.equal(200);
    });

    it("keeps the devices newest first when two beats commit out of order; last_hb and device_key are the last writer's", async () => {
      await beat(database.db, 9, 'a', 'web');
      // As if a's beat had started later than the one below but committed first.
      await sql`UPDATE pulse SET last_hb = now() + interval '1 second' WHERE user_id = 9`.execute(
        database.db,
      );
      await beat(database.db, 9, 'b', 'mobile');
      const { rows } = await sql<{ ahead: boolean; device_key: number; keys: number[] }>`
        SELECT last_hb > now() AS ahead, device_key,
               ARRAY(SELECT d.device_key FROM unnest(devices) d) AS keys
        FROM pulse WHERE user_id = 9`.execute(database.db);
      expect(rows).to.deep.equal([
        { ahead: false, device_key: deviceKey('b'), keys: [deviceKey('a'), deviceKey('b')] },
      ]);
      expect(await events(9)).to.deep.equal(['online:heartbeat']);
    });

    it('writes heartbeats while the settings row is missing (reads are refused meanwhile)', async () => {
      // A Kysely instance of its own: nothing cached of the threshold.
      const fresh = new Kysely<Database>({ dialect: new PostgresDialect({ pool: database.pool }) });
      await sql`DELETE FROM pulse_settings WHERE id = 1`.execute(database.db);
      try {
        await beat(fresh, 30, 'a', 'web');
        await beat(fresh, 30, 'b', 'web');
        expect(await database.ageOf(30)).to.be.a('number');
      } finally {
        await sql`INSERT INTO pulse_settings (id) VALUES (1)`.execute(database.db);
      }
    });

    it('writes one user beating from two devices in one call (two statements), and a request naming none is its own device', async () => {
      await recordHeartbeats(database.db, [4, 4, 4], undefined, [], {
        ids: ['x', null, 'x'],
        kinds: ['web', null, 'desktop'],
      });
      // Two statements: x's, the second, is the newer beat.
      expect((await deviceRows(4)).map((row) => [row.device, row.kind])).to.deep.equal([
        ['x', 'desktop'],
        [null, null],
      ]);
      await recordHeartbeats(database.db, [4]);
      await setDevicesOffline(database.db, [4], [null]);
      expect(await database.ageOf(4)).to.be.a('number');
      await setDevicesOffline(database.db, [4], ['x']);
      expect(await database.ageOf(4)).to.equal(undefined);
    });
  });

  describe('the API', () => {
    it('answers the devices summary in GET /status/{id}, POST /status/batch and the stream', async () => {
      const app = await start({ STREAM_POLL_INTERVAL_MS: '100' });
      const watcher = await open(app, '?watch=10,11');
      const snapshot = await watcher.next<Status[]>();
      expect(snapshot.data.map((row) => row.devices)).to.deep.equal([
        { count: 0, kinds: [] },
        { count: 0, kinds: [] },
      ]);
      await app.post('/status/update', [
        { user_id: 10, device_id: 'phone-1', device_kind: 'mobile' },
        { user_id: 11 },
      ]);
      const changes = [await watcher.next<Status>(), await watcher.next<Status>()];
      const of10 = changes.find((change) => change.data.user_id === 10)!;
      expect(of10.data.devices).to.deep.equal({ count: 1, kinds: ['mobile'] });
      // More devices of an online user are no transition (no event): reads show them. Two of
      // one user in one call are two statements, so a reader may see the first alone meanwhile.
      await app.post('/status/update', [
        { user_id: 10, device_id: 'web:tab.A', device_kind: 'web' },
        { user_id: 10, device_id: 'laptop_2', device_kind: 'web' },
      ]);
      expect(await statusOf(app, 10)).to.deep.include({
        is_online: true,
        devices: { count: 3, kinds: ['mobile', 'web'] },
      });
      const batch = (await (
        await app.post('/status/batch', [{ user_id: 11 }, { user_id: 10 }, { user_id: 12 }])
      ).json()) as Status[];
      expect(batch.map((row) => row.devices)).to.deep.equal([
        { count: 1, kinds: [] },
        { count: 3, kinds: ['mobile', 'web'] },
        { count: 0, kinds: [] },
      ]);
      // Invisible: hidden exactly as online is.
      await app.post('/status/update', { user_id: 11, device_id: 'w', device_kind: 'web' });
      const put = await fetch(`${app.baseUrl}/status/privacy`, {
        method: 'PUT',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ user_id: 10, invisible: true }),
      });
      expect(put.status).to.equal(200);
      expect((await statusOf(app, 10)).devices).to.deep.equal({ count: 0, kinds: [] });
      const hidden = await watcher.next<Status>();
      expect(hidden.data).to.deep.include({ user_id: 10, is_online: false });
      expect(hidden.data.devices).to.deep.equal({ count: 0, kinds: [] });
    });

    it('refuses a bad device with 400 invalid_device, never 500', async () => {
      const app = await start();
      const bad: Array<[string, unknown]> = [
        ['empty', { user_id: 1, device_id: '' }],
        ['65 characters', { user_id: 1, device_id: 'a'.repeat(65) }],
        ['a space', { user_id: 1, device_id: 'my phone' }],
        ['a slash', { user_id: 1, device_id: 'a/b' }],
        ['non-ASCII', { user_id: 1, device_id: 'tél' }],
        ['a number', { user_id: 1, device_id: 42 }],
        ['null', { user_id: 1, device_id: null }],
        ['an unknown kind', { user_id: 1, device_id: 'x', device_kind: 'watch' }],
        ['a kind in capitals', { user_id: 1, device_kind: 'WEB' }],
        ['a kind that is not a string', { user_id: 1, device_kind: ['web'] }],
        ['a bad item of a gateway array', [{ user_id: 1 }, { user_id: 2, device_id: '' }]],
      ];
      for (const [what, body] of bad) {
        for (const path of ['/status/update', '/status/offline', '/status/offline?grace_ms=100']) {
          const response = await app.post(path, body);
          const error = await expectError(response, 400, 'invalid_device');
          expect(error.error.message, `${what} on ${path}`).to.match(/device_(id|kind)/);
        }
      }
      expect(await database.ageOf(1)).to.equal(undefined);
      // 64 characters of every allowed kind is fine.
      const longest = `${'A-z.0_9:'.repeat(8)}`;
      expect(
        (await app.post('/status/update', { user_id: 1, device_id: longest })).status,
      ).to.equal(200);
      for (const query of [
        '?hold=true&user_id=1&device_id=',
        `?hold=true&user_id=1&device_id=${'a'.repeat(65)}`,
        '?hold=true&user_id=1&device_id=a%20b',
        '?hold=true&user_id=1&device_id=a&device_id=b',
        '?hold=true&user_id=1&device_kind=tv',
      ]) {
        await expectError(await app.get(`/status/stream${query}`), 400, 'invalid_device');
      }
      await expectError(
        await app.get('/status/stream?watch=1&device_id=a'),
        400,
        'invalid_request',
      );
    });

    it('ends only the device named by a deferred offline, and a beat of that device cancels it', async () => {
      const app = await start({ OFFLINE_DETECTOR: 'false' });
      await app.post('/status/update', { user_id: 20, device_id: 'phone', device_kind: 'mobile' });
      await app.post('/status/update', {
        user_id: 20,
        device_id: 'laptop',
        device_kind: 'desktop',
      });
      expect(
        (await app.post('/status/offline?grace_ms=300', { user_id: 20, device_id: 'laptop' }))
          .status,
      ).to.equal(202);
      await waitFor('the laptop to leave', async () => (await deviceRows(20)).length === 1);
      expect(await statusOf(app, 20)).to.deep.include({
        is_online: true,
        devices: { count: 1, kinds: ['mobile'] },
      });
      // A grace long enough for the beat to land in it on a loaded machine.
      await app.post('/status/offline?grace_ms=3000', { user_id: 20, device_id: 'phone' });
      await app.post('/status/update', { user_id: 20, device_id: 'phone', device_kind: 'mobile' });
      await new Promise((resolve) => setTimeout(resolve, 3_500));
      expect((await statusOf(app, 20)).is_online).to.equal(true);
      expect(await events(20)).to.deep.equal(['online:heartbeat']);
    });

    // Issue 22's scenario, as a user's phone (API B) and laptop (API A) live it, at the default
    // 20 s threshold: the laptop leaving never shows U offline, the phone leaving does at once.
    it('keeps a user on two devices online when one leaves, 10 runs, and takes them offline within 1.5 s when the last leaves', async function () {
      this.timeout(180_000);
      const a = await start();
      const b = await start();
      for (let run = 0; run < 10; run += 1) {
        const user = 100 + run;
        const watcher = await open(a, `?watch=${user}`);
        expect((await watcher.next<Status[]>()).data[0]!.is_online).to.equal(false);
        const phone = await open(
          b,
          `?hold=true&user_id=${user}&device_id=phone-${run}&device_kind=mobile`,
        );
        const laptop = await open(
          a,
          `?hold=true&user_id=${user}&device_id=laptop-${run}&device_kind=desktop`,
        );
        await phone.next();
        await laptop.next();
        const online = await watcher.next<Status>();
        expect(online.data.is_online).to.equal(true);
        await waitFor('both devices to show', async () => {
          return (await statusOf(b, user)).devices.count === 2;
        });
        expect((await statusOf(a, user)).devices).to.deep.equal({
          count: 2,
          kinds: ['desktop', 'mobile'],
        });

        laptop.close();
        const left = await a.post('/status/offline', {
          user_id: user,
          device_id: `laptop-${run}`,
        });
        expect(left.status).to.equal(200);
        let offlineReads = 0;
        let reads = 0;
        const until = Date.now() + 3_000;
        while (Date.now() < until) {
          const status = await statusOf(reads % 2 ? a : b, user);
          reads += 1;
          if (!status.is_online) offlineReads += 1;
        }
        expect(offlineReads, `run ${run}: offline reads of ${reads}`).to.equal(0);
        expect(watcher.unread, `run ${run}: changes at the watcher`).to.deep.equal([]);
        expect((await statusOf(a, user)).devices).to.deep.equal({ count: 1, kinds: ['mobile'] });

        phone.close();
        const askedAt = Date.now();
        expect(
          (await b.post('/status/offline', { user_id: user, device_id: `phone-${run}` })).status,
        ).to.equal(200);
        expect(
          (await statusOf(a, user)).is_online,
          `run ${run}: read after the last left`,
        ).to.equal(false);
        const offline = await watcher.next<Status>(1_500);
        expect(Date.now() - askedAt, `run ${run}: watcher told within`).to.be.below(1_500);
        expect(offline.data).to.deep.include({ user_id: user, is_online: false });
        expect(offline.data.devices).to.deep.equal({ count: 0, kinds: [] });
        expect(await events(user)).to.deep.equal(['online:held', 'offline:offline']);
        watcher.close();
      }
    });
  });
});

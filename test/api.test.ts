import { expect } from 'chai';
import { startTestApp, type TestApp } from './support/app.ts';
import { createTestDatabase, lastHeartbeats, type TestDatabase } from './support/database.ts';
import { expectError } from './support/http.ts';

const MAX_ID = Number.MAX_SAFE_INTEGER;

/** The devices summary of a user online on one device that named none, and of anyone offline. */
const ONE_DEVICE = { count: 1, kinds: [] };
const NO_DEVICES = { count: 0, kinds: [] };

describe('API', () => {
  let database: TestDatabase;
  let app: TestApp;

  before(async () => {
    database = await createTestDatabase();
    app = await startTestApp(database, { BATCH_MAX_IDS: '5', BODY_LIMIT_BYTES: '2048' });
  });
  after(async () => {
    await app.close();
    await database.drop();
  });

  describe('POST /status/update', () => {
    it('records a heartbeat with the database clock and answers success', async () => {
      const response = await app.post('/status/update', { user_id: 42, timestamp: 1732700000 });
      expect(response.status).to.equal(200);
      // Exactly what res.json sends (the single answer is serialized once, not by res.json).
      expect(response.headers.get('content-type')).to.equal('application/json; charset=utf-8');
      expect(response.headers.get('content-length')).to.equal('20');
      expect(response.headers.get('etag')).to.equal(null);
      expect(await response.text()).to.equal('{"status":"success"}');
      expect(await database.ageOf(42)).to.be.within(0, 2);
    });

    it('refreshes an existing row', async () => {
      await database.putRow(43, 25);
      const response = await app.post('/status/update', { user_id: 43 });
      expect(response.status).to.equal(200);
      expect(await database.ageOf(43)).to.be.below(2);
    });

    it('never lets the client timestamp set last_hb', async () => {
      const farFuture = Math.floor(Date.now() / 1000) + 10 * 365 * 86400;
      await app.post('/status/update', { user_id: 44, timestamp: farFuture });
      const age = await database.ageOf(44);
      expect(age).to.be.within(0, 2);
    });

    it('accepts the largest safe integer as user_id', async () => {
      const response = await app.post('/status/update', { user_id: MAX_ID });
      expect(response.status).to.equal(200);
      expect(await database.ageOf(MAX_ID)).to.be.within(0, 2);
    });

    it('answers an empty gateway batch at once, writing nothing', async () => {
      const before = await database.userIds();
      const response = await app.post('/status/update', []);
      expect(response.status).to.equal(200);
      expect(await response.json()).to.deep.equal({ status: 'success', accepted: 0 });
      expect(await database.userIds()).to.deep.equal(before);
    });

    it('accepts a gateway batch as an array, a repeated id included, and writes every id', async () => {
      await database.putRow(50, 25);
      const response = await app.post('/status/update', [
        { user_id: 50 },
        { user_id: 51 },
        { user_id: 50 },
      ]);
      expect(response.status).to.equal(200);
      expect(await response.json()).to.deep.equal({ status: 'success', accepted: 3 });
      expect(await database.ageOf(50)).to.be.below(2);
      expect(await database.ageOf(51)).to.be.below(2);
    });
  });

  describe('GET /status/:user_id', () => {
    it('is online just inside the threshold and offline just outside it', async () => {
      await database.putRow(100, 18);
      await database.putRow(101, 22);
      const inside = await app.get('/status/100');
      expect(inside.status).to.equal(200);
      const lastSeen = await lastHeartbeats(database, [100, 101]);
      expect(await inside.json()).to.deep.equal({
        user_id: 100,
        is_online: true,
        last_seen: lastSeen.get(100),
        devices: ONE_DEVICE,
      });
      expect(await (await app.get('/status/101')).json()).to.deep.equal({
        user_id: 101,
        is_online: false,
        last_seen: lastSeen.get(101),
        devices: NO_DEVICES,
      });
    });

    it('answers is_online false, not 404, for a user with no row', async () => {
      const response = await app.get('/status/999999');
      expect(response.status).to.equal(200);
      expect(await response.json()).to.deep.equal({
        user_id: 999999,
        is_online: false,
        last_seen: null,
        devices: NO_DEVICES,
      });
    });

    it('shows a user online right after a heartbeat', async () => {
      await app.post('/status/update', { user_id: 102 });
      expect(await (await app.get('/status/102')).json()).to.deep.equal({
        user_id: 102,
        is_online: true,
        last_seen: (await lastHeartbeats(database, [102])).get(102),
        devices: ONE_DEVICE,
      });
    });
  });

  describe('POST /status/batch', () => {
    it('answers every id in request order, duplicates as given', async () => {
      await database.putRow(200, 1);
      await database.putRow(201, 60);
      const response = await app.post('/status/batch', [
        { user_id: 201 },
        { user_id: 200 },
        { user_id: 202 },
        { user_id: 200 },
      ]);
      expect(response.status).to.equal(200);
      const lastSeen = await lastHeartbeats(database, [200, 201]);
      expect(await response.json()).to.deep.equal([
        { user_id: 201, is_online: false, last_seen: lastSeen.get(201), devices: NO_DEVICES },
        { user_id: 200, is_online: true, last_seen: lastSeen.get(200), devices: ONE_DEVICE },
        { user_id: 202, is_online: false, last_seen: null, devices: NO_DEVICES },
        { user_id: 200, is_online: true, last_seen: lastSeen.get(200), devices: ONE_DEVICE },
      ]);
    });

    it('answers an empty array with an empty array', async () => {
      const response = await app.post('/status/batch', []);
      expect(response.status).to.equal(200);
      expect(await response.json()).to.deep.equal([]);
    });
  });

  describe('bad input', () => {
    const badUserIds: [string, unknown][] = [
      ['zero', 0],
      ['negative', -1],
      ['float', 1.5],
      ['string', '42'],
      ['null', null],
      ['above 2^53-1', MAX_ID + 2],
      ['object', { id: 1 }],
      ['array', [1]],
      ['boolean', true],
    ];
    for (const [label, value] of badUserIds) {
      it(`rejects a ${label} user_id with 400 invalid_user_id on update and batch`, async () => {
        await expectError(
          await app.post('/status/update', { user_id: value }),
          400,
          'invalid_user_id',
        );
        await expectError(
          await app.post('/status/batch', [{ user_id: value }]),
          400,
          'invalid_user_id',
        );
      });
    }

    it('rejects a missing user_id with 400 invalid_user_id', async () => {
      await expectError(await app.post('/status/update', { timestamp: 1 }), 400, 'invalid_user_id');
    });

    for (const [label, body] of [
      ['a number', '42'],
      ['a string', '"x"'],
      ['null', 'null'],
    ] as const) {
      it(`rejects ${label} as the JSON body with 400 invalid_json (only objects and arrays)`, async () => {
        await expectError(await app.post('/status/update', body), 400, 'invalid_json');
      });
    }

    it('rejects an object where the batch wants an array with 400 invalid_body', async () => {
      await expectError(await app.post('/status/batch', { user_id: 1 }), 400, 'invalid_body');
    });

    it('rejects array items that are not objects with 400 invalid_body', async () => {
      await expectError(await app.post('/status/batch', [1, 2]), 400, 'invalid_body');
      await expectError(await app.post('/status/update', [[{ user_id: 1 }]]), 400, 'invalid_body');
    });

    it('rejects malformed JSON with 400 invalid_json', async () => {
      await expectError(await app.post('/status/update', '{"user_id": 4'), 400, 'invalid_json');
      await expectError(await app.post('/status/batch', '[{"user_id": 1},]'), 400, 'invalid_json');
    });

    it('rejects a batch above BATCH_MAX_IDS with 413 too_many_ids', async () => {
      const six = [1, 2, 3, 4, 5, 6].map((id) => ({ user_id: id }));
      await expectError(await app.post('/status/batch', six), 413, 'too_many_ids');
      await expectError(await app.post('/status/update', six), 413, 'too_many_ids');
    });

    it('rejects a body above BODY_LIMIT_BYTES with 413 payload_too_large', async () => {
      const big = JSON.stringify({ user_id: 1, padding: 'x'.repeat(4096) });
      await expectError(await app.post('/status/update', big), 413, 'payload_too_large');
    });

    it('rejects a body that is not application/json with 415', async () => {
      await expectError(
        await app.post('/status/update', '{"user_id":1}', { 'content-type': 'text/plain' }),
        415,
        'unsupported_media_type',
      );
      const noType = await fetch(`${app.baseUrl}/status/batch`, { method: 'POST', body: '[]' });
      await expectError(noType, 415, 'unsupported_media_type');
    });

    for (const path of ['abc', '0', '-5', '1.5', '1e3', '9007199254740992', '0042', '%20']) {
      it(`rejects /status/${path} with 400 invalid_user_id`, async () => {
        await expectError(await app.get(`/status/${path}`), 400, 'invalid_user_id');
      });
    }

    it('answers unknown routes with 404 not_found', async () => {
      await expectError(await app.get('/nope'), 404, 'not_found');
      await expectError(await app.post('/status', {}), 404, 'not_found');
    });

    it('changes no row for any rejected request', async () => {
      const before = await database.userIds();
      await app.post('/status/update', { user_id: -7 });
      await app.post('/status/update', [{ user_id: 900 }, { user_id: 'x' }]);
      await app.post('/status/update', '{"user_id": 901', {});
      expect(await database.userIds()).to.deep.equal(before);
    });

    it('does not advertise Express', async () => {
      const response = await app.get('/status/1');
      expect(response.headers.get('x-powered-by')).to.equal(null);
    });
  });
});

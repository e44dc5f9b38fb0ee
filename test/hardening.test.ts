import { gzipSync } from 'node:zlib';
import { expect } from 'chai';
import { Kysely, PostgresDialect, sql, type LogEvent } from 'kysely';
import { toHttpError } from '../api/edge/errors.ts';
import {
  readPresence,
  recordHeartbeats,
  setOffline,
  sweepExpiredBatch,
  trimLastSeenBatch,
} from '../lib/store/pulse-store.ts';
import type { Database } from '../lib/store/schema.ts';
import { startTestApp, type TestApp } from './support/app.ts';
import { createTestDatabase, type TestDatabase } from './support/database.ts';
import { waitFor } from './support/entry-points.ts';
import { expectError } from './support/http.ts';
import { DOCUMENT_ONLY_HEADERS } from './support/security-headers.ts';
import { bearer, hs256, jwtEnv, randomSecret } from './support/tokens.ts';

const secret = randomSecret();
const tokens = hs256(secret);

/** Both auth modes: the env for the app and the headers a permitted caller (a gateway) sends. */
const modes = [
  { mode: 'none', env: {} as Record<string, string>, auth: () => Promise.resolve({}) },
  { mode: 'jwt', env: jwtEnv(secret), auth: async () => bearer(await tokens.gateway()) },
];

for (const { mode, env, auth } of modes) {
  describe(`hardening, AUTH_MODE=${mode}`, () => {
    let database: TestDatabase;
    let app: TestApp;

    before(async () => {
      database = await createTestDatabase();
      app = await startTestApp(database, {
        ...env,
        ONLINE_THRESHOLD_SECONDS: '2',
      });
    });
    after(async () => {
      await app.close();
      await database.drop();
    });

    it('sends security headers for a JSON API on answers and errors, and no X-Powered-By', async () => {
      for (const response of [
        await app.get('/status/1', await auth()),
        await app.get('/status/abc', await auth()),
        await app.get('/nope'),
      ]) {
        const h = response.headers;
        expect(h.get('x-powered-by')).to.equal(null);
        expect(h.get('x-content-type-options')).to.equal('nosniff');
        expect(h.get('content-security-policy')).to.equal(
          "default-src 'none';frame-ancestors 'none'",
        );
        expect(h.get('x-frame-options')).to.equal('DENY');
        expect(h.get('referrer-policy')).to.equal('no-referrer');
        expect(h.get('strict-transport-security')).to.match(/^max-age=\d+/);
        expect(h.get('cross-origin-resource-policy')).to.equal('same-origin');
        // Headers for HTML documents only (api/edge/security-headers.ts): the demo page has them.
        for (const name of DOCUMENT_ONLY_HEADERS) expect(h.get(name), name).to.equal(null);
      }
    });

    it('a far-future client timestamp does not keep a user online past the threshold', async () => {
      const farFuture = Math.floor(Date.now() / 1000) + 10 * 365 * 86_400;
      for (const [id, extra] of [
        [11, { timestamp: farFuture }],
        [12, { timestamp: new Date(farFuture * 1000).toISOString() }],
        [13, { last_hb: '2999-01-01T00:00:00Z', timestamp: farFuture * 1000 }],
      ] as const) {
        const response = await app.post('/status/update', { user_id: id, ...extra }, await auth());
        expect(response.status).to.equal(200);
        expect(await database.ageOf(id)).to.be.within(0, 1.5);
      }
      const online = await app.post(
        '/status/batch',
        [11, 12, 13].map((id) => ({ user_id: id })),
        await auth(),
      );
      const statuses = (await online.json()) as Array<Record<string, unknown>>;
      expect(statuses.map(({ user_id, is_online }) => ({ user_id, is_online }))).to.deep.equal(
        [11, 12, 13].map((id) => ({ user_id: id, is_online: true })),
      );
      // Once the rows are older than ONLINE_THRESHOLD_SECONDS=2 by the database clock:
      await waitFor('the rows to pass the online threshold', async () => {
        const ages = await Promise.all([11, 12, 13].map((id) => database.ageOf(id)));
        return ages.every((age) => age !== undefined && age > 2.1);
      });
      for (const id of [11, 12, 13]) {
        expect(await (await app.get(`/status/${id}`, await auth())).json()).to.deep.include({
          user_id: id,
          is_online: false,
        });
      }
    });

    it('answers a path with broken percent-encoding with 400 invalid_path', async () => {
      for (const path of ['/status/%E0%A4%A', '/status/%', '/status/%zz', '/status/%C0%AF']) {
        const response = await app.get(path, await auth());
        const body = (await response.json()) as { error: { code: string } };
        expect(response.status, path).to.equal(400);
        expect(body.error.code, path).to.equal('invalid_path');
      }
    });

    it('refuses compressed bodies and non-UTF-8 JSON with 415', async () => {
      const before = await database.snapshot();
      const gzip = await fetch(`${app.baseUrl}/status/update`, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          'content-encoding': 'gzip',
          ...(await auth()),
        },
        body: gzipSync(JSON.stringify({ user_id: 20 })),
      });
      await expectError(gzip, 415, 'unsupported_media_type');
      for (const type of [
        'application/json; charset=latin1',
        'application/x-www-form-urlencoded',
        'text/json',
      ]) {
        await expectError(
          await app.post('/status/update', '{"user_id":20}', {
            ...(await auth()),
            'content-type': type,
          }),
          415,
          'unsupported_media_type',
        );
      }
      expect(await database.snapshot()).to.deep.equal(before);
    });

    it('rejects a body of exactly one byte over BODY_LIMIT_BYTES and accepts one at the limit', async () => {
      const limit = app.config.BODY_LIMIT_BYTES;
      const at = (size: number) => {
        const head = '{"user_id":21,"pad":"';
        return `${head}${'x'.repeat(size - head.length - 2)}"}`;
      };
      expect(at(limit)).to.have.length(limit);
      expect((await app.post('/status/update', at(limit), await auth())).status).to.equal(200);
      await database.putRow(21, 100);
      await expectError(
        await app.post('/status/update', at(limit + 1), await auth()),
        413,
        'payload_too_large',
      );
      expect(await database.ageOf(21)).to.be.at.least(100);
    });
  });
}

describe('hardening: errors and SQL', () => {
  let database: TestDatabase;
  let app: TestApp;

  before(async () => {
    database = await createTestDatabase();
    app = await startTestApp(database, jwtEnv(secret));
  });
  after(async () => {
    await app.close();
    await database.drop();
  });

  it('answers a failing statement with no SQL or stack: 500 for a read, 503 for a heartbeat', async () => {
    await sql`ALTER TABLE pulse RENAME TO pulse_gone`.execute(database.db);
    try {
      const read = await app.get('/status/1', bearer(await tokens.user(1)));
      expect(read.status).to.equal(500);
      expect(await read.json()).to.deep.equal({
        error: { code: 'internal_error', message: 'internal error' },
      });
      // A heartbeat whose statement failed was not written: retry later (group commit's rule).
      const write = await app.post('/status/update', { user_id: 1 }, bearer(await tokens.user(1)));
      expect(write.status).to.equal(503);
      expect(await write.json()).to.deep.equal({
        error: { code: 'write_failed', message: 'the heartbeat was not written, retry later' },
      });
    } finally {
      await sql`ALTER TABLE pulse_gone RENAME TO pulse`.execute(database.db);
    }
    expect((await app.get('/status/1', bearer(await tokens.user(1)))).status).to.equal(200);
  });

  it('never puts an error message of an unknown error in the answer', () => {
    const error = toHttpError(new Error('syntax error at or near "SELECT" in INSERT INTO pulse'));
    expect(error.status).to.equal(500);
    expect(error.message).to.equal('internal error');
  });

  it('passes every value to PostgreSQL as a parameter, never inside the SQL text', async () => {
    const events: LogEvent[] = [];
    const logged = new Kysely<Database>({
      dialect: new PostgresDialect({ pool: database.pool }),
      log: (event) => {
        events.push(event);
      },
    });
    const ids = [987_654_321_001, 987_654_321_002];
    await recordHeartbeats(logged, ids);
    await readPresence(logged, ids);
    await sweepExpiredBatch(logged, {
      cursor: '987654321000',
      batchSize: 98_765,
      olderThanSeconds: 987_653,
    });
    await setOffline(logged, ids);
    await trimLastSeenBatch(logged, { before: new Date(), batchSize: 98_766 }); // offset 98765
    expect(events).to.have.length.at.least(8);
    for (const { query } of events) expect(query.sql).not.to.match(/98765/);
    // Every statement carries them, but the two settings reads (the heartbeat's device
    // threshold, the sweep's) and the trim's DELETE (a date only).
    const withValues = events.filter(({ query }) => /98765/.test(JSON.stringify(query.parameters)));
    expect(withValues).to.have.length(events.length - 3);
  });
});

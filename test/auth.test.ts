import { Writable } from 'node:stream';
import { expect } from 'chai';
import { SignJWT } from 'jose';
import { createLogger } from '../lib/infra/logger.ts';
import { startTestApp, type TestApp } from './support/app.ts';
import { createTestDatabase, lastHeartbeats, type TestDatabase } from './support/database.ts';
import { expectError } from './support/http.ts';
import {
  asymmetric,
  AUDIENCE,
  bearer,
  GATEWAY_SCOPE,
  hs256,
  jwtEnv,
  randomSecret,
  type TokenMinter,
} from './support/tokens.ts';

const STALE = 100; // seconds: a row this old must still be this old after a refused heartbeat

async function expectUnauthorized(response: Response, code = 'invalid_token'): Promise<string> {
  await expectError(response, 401, code);
  const challenge = response.headers.get('www-authenticate') ?? '';
  expect(challenge).to.match(/^Bearer realm="pulse"/);
  if (code === 'invalid_token') expect(challenge).to.include('error="invalid_token"');
  return challenge;
}

describe('authentication, AUTH_MODE=jwt with HS256', () => {
  const secret = randomSecret();
  const tokens = hs256(secret);
  let database: TestDatabase;
  let app: TestApp;

  before(async () => {
    database = await createTestDatabase();
    app = await startTestApp(database, jwtEnv(secret, { BATCH_MAX_IDS: '5' }));
  });
  after(async () => {
    await app.close();
    await database.drop();
  });
  beforeEach(async () => {
    for (const id of [1, 2, 3, 7]) await database.putRow(id, STALE);
  });

  /** Sends a heartbeat for user 7 with these headers and checks it was refused with 401. */
  async function expectRefusedHeartbeat(headers: Record<string, string>, code = 'invalid_token') {
    const before = await database.snapshot();
    const challenge = await expectUnauthorized(
      await app.post('/status/update', { user_id: 7 }, headers),
      code,
    );
    expect(await database.snapshot()).to.deep.equal(before);
    return challenge;
  }

  describe('refuses requests without a valid token with 401 and WWW-Authenticate', () => {
    it('no Authorization header: 401 unauthorized on every /status route, no row changed', async () => {
      const challenge = await expectRefusedHeartbeat({}, 'unauthorized');
      expect(challenge).to.equal('Bearer realm="pulse"');
      await expectUnauthorized(await app.get('/status/7'), 'unauthorized');
      await expectUnauthorized(await app.post('/status/batch', [{ user_id: 7 }]), 'unauthorized');
      await expectUnauthorized(await app.post('/status/update', [{ user_id: 7 }]), 'unauthorized');
    });

    it('malformed Authorization headers', async () => {
      const token = await tokens.user(7);
      for (const header of [
        `Basic ${Buffer.from('7:x').toString('base64')}`,
        'Bearer',
        'Bearer ',
        token,
        `Bearer ${token} extra`,
        `Bearer ${token.split('.').slice(0, 2).join('.')}`,
        `Bearer ${token}.x`,
        'Bearer a.b.c',
        `Bearer ${'a'.repeat(9000)}.b.c`,
        'Bearer ..',
      ]) {
        await expectRefusedHeartbeat({ authorization: header });
      }
    });

    it('a token signed with another secret', async () => {
      const forged = await hs256(randomSecret()).user(7);
      const challenge = await expectRefusedHeartbeat(bearer(forged));
      expect(challenge).to.include('signature');
    });

    it('a token whose payload was changed after signing', async () => {
      const [header, , signature] = (await tokens.user(8)).split('.');
      const payload = Buffer.from(
        JSON.stringify({ sub: '7', exp: Math.floor(Date.now() / 1000) + 60, iss: 'x' }),
      ).toString('base64url');
      await expectRefusedHeartbeat(bearer(`${header}.${payload}.${signature}`));
    });

    it('an unsigned token (alg none)', async () => {
      const head = Buffer.from(JSON.stringify({ alg: 'none', typ: 'JWT' })).toString('base64url');
      const body = Buffer.from(JSON.stringify({ sub: '7', scope: GATEWAY_SCOPE })).toString(
        'base64url',
      );
      await expectRefusedHeartbeat(bearer(`${head}.${body}.`));
    });

    it('a token signed with another HMAC algorithm (HS512)', async () => {
      const token = await new SignJWT({ sub: '7', iss: 'https://auth.pulse.test', aud: AUDIENCE })
        .setProtectedHeader({ alg: 'HS512' })
        .setExpirationTime('5m')
        .sign(new TextEncoder().encode(secret));
      await expectRefusedHeartbeat(bearer(token));
    });

    it('an expired token, beyond the clock tolerance', async () => {
      const challenge = await expectRefusedHeartbeat(
        bearer(await tokens.user(7, { expiresIn: -30 })),
      );
      expect(challenge).to.include('expired');
    });

    it('a token whose nbf is in the future, beyond the clock tolerance', async () => {
      const challenge = await expectRefusedHeartbeat(
        bearer(await tokens.user(7, { notBefore: 60 })),
      );
      expect(challenge).to.include('not valid yet');
    });

    it('a token without exp', async () => {
      await expectRefusedHeartbeat(bearer(await tokens.user(7, { expiresIn: null })));
    });

    it('a wrong or missing issuer, a wrong or missing audience', async () => {
      await expectRefusedHeartbeat(bearer(await tokens.user(7, { issuer: 'https://evil.test' })));
      await expectRefusedHeartbeat(bearer(await tokens.user(7, { issuer: null })));
      await expectRefusedHeartbeat(bearer(await tokens.user(7, { audience: 'other-api' })));
      await expectRefusedHeartbeat(bearer(await tokens.user(7, { audience: null })));
    });

    it('a sub that is not a user id, without the gateway scope', async () => {
      for (const sub of [
        '0',
        '-7',
        '7.0',
        ' 7',
        '07',
        '9007199254740992',
        'alice',
        7,
        null,
        undefined,
      ]) {
        await expectRefusedHeartbeat(bearer(await tokens.sign({ claims: { sub } })));
      }
    });

    it('a scope claim of the wrong type', async () => {
      await expectRefusedHeartbeat(bearer(await tokens.user(7, { claims: { scope: 42 } })));
      await expectRefusedHeartbeat(
        bearer(await tokens.user(7, { claims: { scope: [GATEWAY_SCOPE, 1] } })),
      );
    });

    it('answers 401 before reading the body: an unauthenticated oversized body is 401, not 413', async () => {
      const big = JSON.stringify([{ user_id: 1, padding: 'x'.repeat(200_000) }]);
      await expectUnauthorized(await app.post('/status/update', big), 'unauthorized');
    });
  });

  describe('accepts tokens inside the clock tolerance', () => {
    it('expired 2 s ago with a 5 s tolerance', async () => {
      const response = await app.post(
        '/status/update',
        { user_id: 7 },
        bearer(await tokens.user(7, { expiresIn: -2 })),
      );
      expect(response.status).to.equal(200);
      expect(await database.ageOf(7)).to.be.below(2);
    });

    it('nbf 2 s in the future with a 5 s tolerance', async () => {
      const response = await app.post(
        '/status/update',
        { user_id: 7 },
        bearer(await tokens.user(7, { notBefore: 2 })),
      );
      expect(response.status).to.equal(200);
    });

    it('the Bearer scheme in any case', async () => {
      const response = await app.post(
        '/status/update',
        { user_id: 7 },
        {
          authorization: `bEaReR ${await tokens.user(7)}`,
        },
      );
      expect(response.status).to.equal(200);
    });
  });

  describe('heartbeats: a user for themselves, a gateway for anyone', () => {
    it('a user may send their own heartbeat (200, row refreshed)', async () => {
      const response = await app.post(
        '/status/update',
        { user_id: 7, timestamp: 1 },
        bearer(await tokens.user(7)),
      );
      expect(response.status).to.equal(200);
      expect(await response.json()).to.deep.equal({ status: 'success' });
      expect(await database.ageOf(7)).to.be.below(2);
    });

    it('a user may not send a heartbeat for another user: 403 forbidden, row unchanged', async () => {
      const before = await database.snapshot();
      const response = await app.post(
        '/status/update',
        { user_id: 2 },
        bearer(await tokens.user(7)),
      );
      await expectError(response, 403, 'forbidden');
      expect(response.headers.get('www-authenticate')).to.include('error="insufficient_scope"');
      expect(await database.snapshot()).to.deep.equal(before);
      expect(await database.ageOf(2)).to.be.at.least(STALE);
    });

    it('a user may not use the batch form for other ids: 403, no row changed (not even their own)', async () => {
      const before = await database.snapshot();
      const response = await app.post(
        '/status/update',
        [{ user_id: 7 }, { user_id: 1 }, { user_id: 900 }],
        bearer(await tokens.user(7)),
      );
      await expectError(response, 403, 'forbidden');
      expect(await database.snapshot()).to.deep.equal(before);
    });

    it('a user may use the batch form for their own id only', async () => {
      const response = await app.post(
        '/status/update',
        [{ user_id: 7 }, { user_id: 7 }],
        bearer(await tokens.user(7)),
      );
      expect(response.status).to.equal(200);
      expect(await database.ageOf(7)).to.be.below(2);
    });

    it('a scope that only looks like the gateway scope grants nothing', async () => {
      for (const scope of [
        'presence:write:anything',
        'presence:write',
        `x${GATEWAY_SCOPE}`,
        'PRESENCE:WRITE:ANY',
      ]) {
        const token = await tokens.user(7, { claims: { scope } });
        await expectError(
          await app.post('/status/update', { user_id: 2 }, bearer(token)),
          403,
          'forbidden',
        );
      }
      expect(await database.ageOf(2)).to.be.at.least(STALE);
    });

    it('a gateway may send a single heartbeat for any user', async () => {
      const response = await app.post(
        '/status/update',
        { user_id: 2 },
        bearer(await tokens.gateway()),
      );
      expect(response.status).to.equal(200);
      expect(await database.ageOf(2)).to.be.below(2);
    });

    it('a gateway may send the batch form for many users', async () => {
      const response = await app.post(
        '/status/update',
        [{ user_id: 1 }, { user_id: 2 }, { user_id: 3 }, { user_id: 901 }],
        bearer(await tokens.gateway()),
      );
      expect(response.status).to.equal(200);
      expect(await response.json()).to.deep.equal({ status: 'success', accepted: 4 });
      for (const id of [1, 2, 3, 901]) expect(await database.ageOf(id)).to.be.below(2);
    });

    it('the gateway scope works as an array too, and with a user id as sub', async () => {
      const asArray = await tokens.user(7, { claims: { scope: ['presence:read', GATEWAY_SCOPE] } });
      expect((await app.post('/status/update', [{ user_id: 3 }], bearer(asArray))).status).to.equal(
        200,
      );
      expect(await database.ageOf(3)).to.be.below(2);
    });

    it('a gateway token without a sub is accepted', async () => {
      const token = await tokens.gateway({ claims: { sub: undefined } });
      expect((await app.post('/status/update', { user_id: 1 }, bearer(token))).status).to.equal(
        200,
      );
    });

    it('the gateway is still held to the input limits', async () => {
      const six = [1, 2, 3, 4, 5, 6].map((id) => ({ user_id: id }));
      await expectError(
        await app.post('/status/update', six, bearer(await tokens.gateway())),
        413,
        'too_many_ids',
      );
    });
  });

  describe('reads need a valid token', () => {
    it('GET /status/:userId: 401 without a token, 401 with a bad one, 200 with any valid one', async () => {
      await expectUnauthorized(await app.get('/status/1'), 'unauthorized');
      await expectUnauthorized(
        await app.get('/status/1', bearer(await tokens.user(7, { expiresIn: -60 }))),
      );
      const response = await app.get('/status/1', bearer(await tokens.user(7)));
      expect(response.status).to.equal(200);
      expect(await response.json()).to.deep.equal({
        user_id: 1,
        is_online: false,
        last_seen: (await lastHeartbeats(database, [1])).get(1),
        devices: { count: 0, kinds: [] },
      });
      expect(response.headers.get('cache-control')).to.equal('no-store');
    });

    it('POST /status/batch: 401 without a token, 200 with a user token', async () => {
      await expectUnauthorized(await app.post('/status/batch', [{ user_id: 1 }]), 'unauthorized');
      const response = await app.post(
        '/status/batch',
        [{ user_id: 1 }, { user_id: 7 }],
        bearer(await tokens.user(7)),
      );
      expect(response.status).to.equal(200);
      const lastSeen = await lastHeartbeats(database, [1, 7]);
      expect(await response.json()).to.deep.equal([
        {
          user_id: 1,
          is_online: false,
          last_seen: lastSeen.get(1),
          devices: { count: 0, kinds: [] },
        },
        {
          user_id: 7,
          is_online: false,
          last_seen: lastSeen.get(7),
          devices: { count: 0, kinds: [] },
        },
      ]);
    });

    it('unknown routes under /status need a token too; others answer 404', async () => {
      await expectUnauthorized(await app.get('/status'), 'unauthorized');
      await expectError(await app.get('/status', bearer(await tokens.user(7))), 404, 'not_found');
      await expectError(await app.get('/nope'), 404, 'not_found');
    });
  });

  it('never writes the token to the log', async () => {
    const lines: string[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _encoding, done) {
        lines.push(chunk.toString());
        done();
      },
    });
    const logged = await startTestApp(database, jwtEnv(secret), createLogger('t', 'info', sink));
    try {
      const token = await tokens.user(7);
      expect((await logged.get('/status/7', bearer(token))).status).to.equal(200);
      await expectUnauthorized(await logged.get('/status/7', bearer(`${token}x`)));
    } finally {
      await logged.close();
    }
    const log = lines.join('');
    expect(log).to.include('/status/7');
    expect(log).not.to.include('eyJ');
  });
});

for (const algorithm of ['RS256', 'ES256'] as const) {
  describe(`authentication, AUTH_MODE=jwt with an ${algorithm} public key`, () => {
    let database: TestDatabase;
    let app: TestApp;
    let minter: TokenMinter;
    let publicKeyPem: string;

    before(async () => {
      ({ minter, publicKeyPem } = await asymmetric(algorithm));
      database = await createTestDatabase();
      app = await startTestApp(database, {
        AUTH_MODE: 'jwt',
        AUTH_JWT_PUBLIC_KEY: publicKeyPem,
      });
      await database.putRow(2, STALE);
    });
    after(async () => {
      await app.close();
      await database.drop();
    });

    it('accepts a user token and a gateway token signed with the private key', async () => {
      expect(
        (await app.post('/status/update', { user_id: 7 }, bearer(await minter.user(7)))).status,
      ).to.equal(200);
      expect((await app.get('/status/7', bearer(await minter.user(1)))).status).to.equal(200);
      const gateway = await minter.gateway({ issuer: null, audience: null });
      expect((await app.post('/status/update', [{ user_id: 8 }], bearer(gateway))).status).to.equal(
        200,
      );
      await expectError(
        await app.post('/status/update', { user_id: 2 }, bearer(await minter.user(7))),
        403,
        'forbidden',
      );
      expect(await database.ageOf(2)).to.be.at.least(STALE);
    });

    it('refuses a token from another key pair', async () => {
      const other = (await asymmetric(algorithm)).minter;
      await expectUnauthorized(
        await app.post('/status/update', { user_id: 2 }, bearer(await other.gateway())),
      );
      expect(await database.ageOf(2)).to.be.at.least(STALE);
    });

    it('refuses an HS256 token keyed with the public key (algorithm confusion)', async () => {
      const confused = await hs256(publicKeyPem).gateway();
      await expectUnauthorized(await app.post('/status/update', { user_id: 2 }, bearer(confused)));
      expect(await database.ageOf(2)).to.be.at.least(STALE);
    });
  });
}

describe('AUTH_MODE=none', () => {
  let database: TestDatabase;
  let app: TestApp;

  before(async () => {
    database = await createTestDatabase();
    app = await startTestApp(database, { AUTH_MODE: 'none' });
  });
  after(async () => {
    await app.close();
    await database.drop();
  });

  it('lets anyone write anyone, with or without an Authorization header (local use only)', async () => {
    expect((await app.post('/status/update', { user_id: 5 })).status).to.equal(200);
    const garbage = { authorization: 'Bearer not.a.token' };
    expect(
      (await app.post('/status/update', [{ user_id: 6 }, { user_id: 7 }], garbage)).status,
    ).to.equal(200);
    expect((await app.get('/status/5', garbage)).status).to.equal(200);
    expect(await database.userIds()).to.deep.equal([5, 6, 7]);
  });

  it('is the default', async () => {
    const defaulted = await startTestApp(database);
    try {
      expect(defaulted.config.AUTH_MODE).to.equal('none');
      expect((await defaulted.post('/status/update', { user_id: 9 })).status).to.equal(200);
    } finally {
      await defaulted.close();
    }
  });
});

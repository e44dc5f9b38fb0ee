/**
 * The bad-input suite: fast-check throws random malformed paths, bodies, headers and tokens at
 * every endpoint, in both auth modes. Every answer must be a 4xx with a JSON error code, the table
 * must be unchanged by every rejected request, and a valid request must still work afterwards.
 * On a failure fast-check prints the seed and the shrunk counterexample.
 */
import { expect } from 'chai';
import fc from 'fast-check';
import { startTestApp, type TestApp } from './support/app.ts';
import { createTestDatabase, type TestDatabase } from './support/database.ts';
import { bearer, GATEWAY_SCOPE, hs256, jwtEnv, randomSecret } from './support/tokens.ts';

const RUNS = 150;
const BATCH_MAX_IDS = 5;
const BODY_LIMIT_BYTES = 2048;
const SEEDED = [1, 2, 3, 7, 42];
const MAX_ID = Number.MAX_SAFE_INTEGER;

// ---- what a valid request looks like (an independent oracle, to keep generated input invalid) ----

type Json = unknown;
const isUserRef = (v: Json): boolean =>
  typeof v === 'object' &&
  v !== null &&
  !Array.isArray(v) &&
  Number.isSafeInteger((v as { user_id?: unknown }).user_id) &&
  (v as { user_id: number }).user_id >= 1;
const isRefList = (v: Json): boolean =>
  Array.isArray(v) && v.length <= BATCH_MAX_IDS && v.every(isUserRef);

/** Would this body text be accepted on this route (ignoring auth)? */
function isValidBody(route: 'update' | 'batch', text: string): boolean {
  if (Buffer.byteLength(text) > BODY_LIMIT_BYTES) return false;
  let value: Json;
  try {
    value = JSON.parse(text);
  } catch {
    return false;
  }
  if (typeof value !== 'object' || value === null) return false; // body-parser strict mode
  return route === 'batch' ? isRefList(value) : isUserRef(value) || isRefList(value);
}

// ---- generators ----

const printable = fc.string({
  unit: fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)),
});

const badUserId: fc.Arbitrary<Json> = fc.oneof(
  fc.integer({ min: -MAX_ID, max: 0 }),
  fc.double().filter((d) => !(Number.isSafeInteger(d) && d >= 1)),
  fc.double({ min: 2 ** 53, noNaN: true }),
  fc.constantFrom(MAX_ID + 1, MAX_ID + 2, 1e300, -0, 0.5, 1.0000001),
  fc.string(),
  fc.integer({ min: 1 }).map(String),
  fc.constantFrom(null, true, false),
  fc.object({ maxDepth: 2 }),
  fc.array(fc.integer({ min: 1, max: 100 }), { maxLength: 3 }),
);

const goodRef = fc.integer({ min: 1, max: 1000 }).map((id) => ({ user_id: id }));
const badRef: fc.Arbitrary<Json> = fc.oneof(
  badUserId.map((user_id) => ({ user_id })),
  fc.record({ id: fc.integer({ min: 1 }) }), // user_id missing
  fc.jsonValue({ maxDepth: 2 }).filter((v) => !isUserRef(v)),
);
const extraFields = fc.dictionary(fc.string({ maxLength: 8 }), fc.jsonValue({ maxDepth: 1 }), {
  maxKeys: 3,
});

/** Body texts, filtered to the ones the route must reject. */
const badBodyText = (route: 'update' | 'batch'): fc.Arbitrary<string> =>
  fc
    .oneof(
      badRef.chain((ref) =>
        extraFields.map((extra) => JSON.stringify({ ...extra, ...(ref as object) })),
      ),
      fc
        .tuple(fc.array(goodRef, { maxLength: 3 }), badRef, fc.array(goodRef, { maxLength: 3 }))
        .map(([a, bad, b]) => JSON.stringify([...a, bad, ...b])),
      fc
        .array(goodRef, { minLength: BATCH_MAX_IDS + 1, maxLength: 3 * BATCH_MAX_IDS })
        .map((a) => JSON.stringify(a)),
      fc.array(goodRef, { minLength: 1, maxLength: 2 }).map((a) => JSON.stringify([a])), // nested arrays
      fc.jsonValue({ maxDepth: 3 }).map((v) => JSON.stringify(v) ?? 'null'),
      fc.string({ unit: 'binary', maxLength: 64 }),
      fc.string({ unit: 'binary-ascii', maxLength: 64 }).map((s) => `{"user_id": ${s}}`),
      fc
        .integer({ min: BODY_LIMIT_BYTES, max: 4 * BODY_LIMIT_BYTES })
        .map((n) => JSON.stringify({ user_id: 1, pad: 'x'.repeat(n) })),
    )
    .filter((text) => !isValidBody(route, text));

const pathSegment: fc.Arbitrary<string> = fc.oneof(
  fc.constantFrom(
    '0',
    '-1',
    '1.5',
    '1e3',
    '0x10',
    '9007199254740992',
    '0042',
    '+1',
    ' 1',
    '%',
    '%zz',
    '%E0%A4%A',
    '%00',
    '..',
    '.',
    '',
    'null',
    'undefined',
    '__proto__',
    'constructor',
    'update',
    'batch',
  ),
  fc.string({ maxLength: 12 }),
  fc.string({ unit: 'binary', maxLength: 12 }),
  fc.webSegment(),
  fc.integer({ min: 1 }).map((n) => `${n}${'0'.repeat(10)}`),
);

const method = fc.constantFrom('GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS');

/** Would the router treat this request as a valid one? (Errs towards "valid": those are skipped.) */
function isValidRoute(verb: string, url: URL): boolean {
  let path: string;
  try {
    path = decodeURIComponent(url.pathname).toLowerCase().replace(/\/+$/, '');
  } catch {
    return false;
  }
  // GET / points to the demo page and the contract.
  if (verb === 'GET' && path === '') return true;
  if (verb === 'GET') {
    const id = /^\/status\/([1-9]\d{0,15})$/.exec(path)?.[1];
    return id !== undefined && Number.isSafeInteger(Number(id));
  }
  return verb === 'POST' && ['/status/update', '/status/batch'].includes(path);
}

const headerName = fc.stringMatching(/^x-[a-z0-9-]{1,16}$/);
const contentType = fc
  .oneof(
    fc.stringMatching(/^[a-z]{1,12}\/[a-z0-9.+-]{1,16}(; ?charset=[a-z0-9-]{1,10})?$/),
    fc.constantFrom(
      'application/json; charset=latin1',
      'application/json; charset=utf-16',
      'application/jsonx',
      'application/x-www-form-urlencoded',
      'multipart/form-data; boundary=x',
      'text/plain',
      'application/problem+json',
      '*/*',
      '',
    ),
  )
  .filter((t) => !/^application\/json(\s*;\s*charset=utf-8)?$/i.test(t.trim()));
const contentEncoding = fc
  .oneof(
    fc.constantFrom('gzip', 'deflate', 'br', 'compress', 'x-gzip', 'gzip, identity'),
    fc.stringMatching(/^[a-z-]{1,12}$/),
  )
  .filter((e) => e !== 'identity');

// ---- the suite ----

for (const mode of ['none', 'jwt'] as const) {
  describe(`bad-input suite (fast-check, ${RUNS} runs per property), AUTH_MODE=${mode}`, () => {
    const secret = randomSecret();
    const tokens = hs256(secret);
    let database: TestDatabase;
    let app: TestApp;
    /** Headers that authorize anything (a gateway token in jwt mode). */
    let allowed: Record<string, string> = {};
    let validToken = '';

    before(async () => {
      database = await createTestDatabase();
      app = await startTestApp(database, {
        ...(mode === 'jwt' ? jwtEnv(secret) : {}),
        BATCH_MAX_IDS: String(BATCH_MAX_IDS),
        BODY_LIMIT_BYTES: String(BODY_LIMIT_BYTES),
      });
      validToken = await tokens.gateway({ expiresIn: 3600 });
      allowed = mode === 'jwt' ? bearer(validToken) : {};
      for (const id of SEEDED) await database.putRow(id, 100);
    });
    after(async () => {
      await app.close();
      await database.drop();
    });

    /** Sends one request that must be rejected, and checks everything the issue asks. */
    async function expectRejected(
      verb: string,
      path: string,
      headers: Record<string, string>,
      body?: string,
    ): Promise<void> {
      const before = await database.snapshot();
      const response = await fetch(app.baseUrl + path, {
        method: verb,
        headers,
        ...(body === undefined || verb === 'GET' ? {} : { body }),
      });
      const text = await response.text();
      const context = `${verb} ${path} -> ${response.status} ${text.slice(0, 200)}`;
      expect(response.status, context).to.be.within(400, 499);
      expect(response.headers.get('content-type'), context).to.match(/^application\/json/);
      const parsed = JSON.parse(text) as { error?: { code?: unknown; message?: unknown } };
      expect(parsed.error?.code, context)
        .to.be.a('string')
        .and.match(/^[a-z_]+$/);
      expect(parsed.error?.message, context)
        .to.be.a('string')
        .and.not.match(/\.ts:\d+|SELECT|INSERT/);
      if (response.status === 401)
        expect(response.headers.get('www-authenticate'), context).to.match(/^Bearer /);
      expect(await database.snapshot(), `table changed by ${context}`).to.deep.equal(before);
      // The process is still up and serving.
      const followUp = await app.get('/status/42', allowed);
      expect(followUp.status, `follow-up after ${context}`).to.equal(200);
      expect(await followUp.json()).to.deep.include({ user_id: 42, is_online: false });
    }

    const json = (extra: Record<string, string> = {}) => ({
      'content-type': 'application/json',
      ...allowed,
      ...extra,
    });

    it('malformed bodies on POST /status/update and /status/batch', async () => {
      await fc.assert(
        fc.asyncProperty(
          fc
            .constantFrom('update' as const, 'batch' as const)
            .chain((route) => badBodyText(route).map((text) => ({ route, text }))),
          async ({ route, text }) => {
            await expectRejected('POST', `/status/${route}`, json(), text);
          },
        ),
        { numRuns: RUNS },
      );
    });

    it('malformed paths and methods on every route', async () => {
      await fc.assert(
        fc.asyncProperty(
          method,
          fc.oneof(
            pathSegment.map((s) => `/status/${s}`),
            fc.tuple(pathSegment, pathSegment).map(([a, b]) => `/status/${a}/${b}`),
            pathSegment.map((s) => `/${s}`),
            fc
              .tuple(pathSegment, fc.constantFrom('status', 'STATUS', 'status/update', 'status/1'))
              .map(([s, base]) => `/${s}/${base}`),
          ),
          async (verb, rawPath) => {
            const path = rawPath.replace(/[?#]/g, encodeURIComponent);
            let url: URL;
            try {
              url = new URL(app.baseUrl + path);
            } catch {
              fc.pre(false);
              return;
            }
            fc.pre(url.origin === app.baseUrl && !isValidRoute(verb, url));
            await expectRejected(verb, url.pathname, json(), JSON.stringify({ user_id: 7 }));
          },
        ),
        { numRuns: RUNS },
      );
    });

    it('wrong content types, content encodings and random extra headers', async () => {
      await fc.assert(
        fc.asyncProperty(
          fc.option(contentType, { nil: undefined }),
          fc.option(contentEncoding, { nil: undefined }),
          fc.dictionary(headerName, printable, { maxKeys: 4 }),
          fc.constantFrom('update', 'batch'),
          async (type, encoding, extra, route) => {
            fc.pre(type !== undefined || encoding !== undefined);
            const headers: Record<string, string> = { ...extra, ...json() };
            if (type !== undefined) headers['content-type'] = type;
            if (encoding !== undefined) headers['content-encoding'] = encoding;
            await expectRejected(
              'POST',
              `/status/${route}`,
              headers,
              JSON.stringify([{ user_id: 7 }]),
            );
          },
        ),
        { numRuns: RUNS },
      );
    });

    it('random, forged, tampered, expired and mis-scoped tokens', async () => {
      const now = () => Math.floor(Date.now() / 1000);
      const tampered = fc
        .tuple(
          fc.nat(),
          fc.constantFrom(...'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'),
        )
        .map(([index, char]) => {
          const i = index % validToken.length;
          return validToken.slice(0, i) + char + validToken.slice(i + 1);
        })
        .filter((token) => {
          // Skip mutations that decode to the same bytes (base64url padding bits): still valid.
          const decode = (t: string) =>
            t.split('.').map((p) => Buffer.from(p, 'base64url').toString('hex'));
          return (
            token.split('.').length !== 3 ||
            decode(token).join('.') !== decode(validToken).join('.')
          );
        });
      /** Claims that make a token invalid for every route (401). */
      const invalidClaims = fc.oneof(
        fc.record({
          sub: badUserId.map((v) => (typeof v === 'number' ? v : (JSON.stringify(v) ?? null))),
        }),
        fc.record({
          sub: fc.constant('7'),
          exp: fc.integer({ min: 10, max: 1e6 }).map((s) => now() - s),
        }),
        fc.record({
          sub: fc.constant('7'),
          nbf: fc.integer({ min: 10, max: 1e6 }).map((s) => now() + s),
        }),
        fc.record({ sub: fc.constant('7'), iss: fc.string() }),
        fc.record({
          sub: fc.constant('7'),
          aud: fc.oneof(fc.string(), fc.array(fc.string(), { maxLength: 2 })),
        }),
        fc.record({
          sub: fc.constant('7'),
          scope: fc.oneof(fc.integer(), fc.object({ maxDepth: 1 }), fc.constant([1])),
        }),
      );
      /** Valid tokens of another user, without the gateway scope: they may read, not write 7. */
      const otherUserClaims = fc.record({
        sub: fc
          .integer({ min: 1, max: MAX_ID })
          .filter((id) => id !== 7)
          .map(String),
        scope: fc.oneof(
          fc.string().filter((s) => !s.split(' ').includes(GATEWAY_SCOPE)),
          fc.constantFrom(`${GATEWAY_SCOPE}x`, 'presence:write', GATEWAY_SCOPE.toUpperCase()),
        ),
      });
      const everywhere = (spec: fc.Arbitrary<string>) => spec.map((s) => ({ spec: s, all: true }));
      const authorization = fc.oneof(
        everywhere(printable),
        everywhere(printable.map((s) => `Bearer ${s}`)),
        everywhere(
          fc
            .array(fc.base64String({ maxLength: 40 }), { minLength: 3, maxLength: 3 })
            .map((parts) => `Bearer ${parts.map((p) => p.replace(/[+/=]/g, '')).join('.')}`),
        ),
        everywhere(tampered.map((t) => `Bearer ${t}`)),
        everywhere(fc.constant('forged:')), // a gateway token signed with some other secret
        everywhere(invalidClaims.map((claims) => `claims:${JSON.stringify(claims)}`)),
        everywhere(
          fc.constantFrom('Basic dXNlcjpwYXNz', 'Bearer', 'Token abc', `bearer  ${'x'.repeat(50)}`),
        ),
        otherUserClaims.map((claims) => ({ spec: `claims:${JSON.stringify(claims)}`, all: false })),
      );
      const route = fc.constantFrom('update' as const, 'batch' as const, 'get' as const);
      // AUTH_MODE=none ignores the header, so there the body is a bad one (unused in jwt mode).
      const badBodies =
        mode === 'none'
          ? fc.record({ update: badBodyText('update'), batch: badBodyText('batch') })
          : fc.constant({ update: '', batch: '' });
      await fc.assert(
        fc.asyncProperty(authorization, route, badBodies, async ({ spec, all }, chosen, bad) => {
          let header = spec;
          if (spec === 'forged:') {
            const forger = hs256(randomSecret());
            header = `Bearer ${await forger.user(7, { claims: { scope: GATEWAY_SCOPE } })}`;
          } else if (spec.startsWith('claims:')) {
            const claims = JSON.parse(spec.slice(7)) as Record<string, unknown>;
            header = `Bearer ${await tokens.sign({ claims })}`;
          }
          const headers = { 'content-type': 'application/json', authorization: header };
          if (mode === 'none') {
            const target = chosen === 'batch' ? 'batch' : 'update';
            await expectRejected('POST', `/status/${target}`, headers, bad[target]);
            return;
          }
          // jwt mode: the request is valid but for its token. A valid token of another user may
          // read, so it is only sent as a heartbeat for user 7.
          const target = all ? chosen : 'update';
          if (target === 'get') await expectRejected('GET', '/status/7', headers);
          else {
            const body = target === 'batch' ? [{ user_id: 7 }] : { user_id: 7 };
            await expectRejected('POST', `/status/${target}`, headers, JSON.stringify(body));
          }
        }),
        { numRuns: RUNS },
      );
    });

    it('still serves valid requests after all of it', async () => {
      const response = await app.post('/status/update', [{ user_id: 42 }], allowed);
      expect(response.status).to.equal(200);
      expect(await database.ageOf(42)).to.be.below(2);
      expect(await (await app.get('/status/42', allowed)).json()).to.deep.include({
        user_id: 42,
        is_online: true,
      });
    });
  });
}

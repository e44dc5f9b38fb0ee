/**
 * Keys from a JWKS URL (issue 24): verified with jose's remote key set against a JWKS server
 * started here, with a key rotation in the middle and an endpoint that stops answering.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import { expect } from 'chai';
import { exportJWK, generateKeyPair, type JWK } from 'jose';
import { type ConfigError, loadApiConfig } from '../lib/infra/config.ts';
import { createLogger } from '../lib/infra/logger.ts';
import { startTestApp, type TestApp } from './support/app.ts';
import { createTestDatabase, type TestDatabase } from './support/database.ts';
import { waitFor } from './support/entry-points.ts';
import { AUDIENCE, bearer, ISSUER, TokenMinter } from './support/tokens.ts';

interface SigningKey {
  kid: string;
  minter: TokenMinter;
  jwk: JWK;
}

async function signingKey(kid: string, algorithm: 'RS256' | 'ES256'): Promise<SigningKey> {
  const { privateKey, publicKey } = await generateKeyPair(algorithm, { extractable: true });
  const jwk = { ...(await exportJWK(publicKey)), kid, alg: algorithm, use: 'sig' };
  return { kid, minter: new TokenMinter(algorithm, privateKey, kid), jwk };
}

/** An identity provider's JWKS endpoint: serves `published`, or 503 while `down`. */
class JwksServer {
  published: SigningKey[] = [];
  down = false;
  fetches = 0;
  failedFetches = 0;
  private server: Server | undefined;
  url = '';

  async start(): Promise<void> {
    this.server = createServer((_req, res) => {
      this.fetches += 1;
      if (this.down) {
        this.failedFetches += 1;
        res.writeHead(503).end();
        return;
      }
      res
        .writeHead(200, { 'content-type': 'application/json' })
        .end(JSON.stringify({ keys: this.published.map((k) => k.jwk) }));
    });
    await new Promise<void>((resolve) => this.server!.listen(0, '127.0.0.1', resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}/.well-known/jwks.json`;
  }

  async stop(): Promise<void> {
    this.server?.closeAllConnections();
    await new Promise((resolve) => this.server?.close(resolve));
  }
}

describe('keys from a JWKS URL (AUTH_JWKS_URL)', () => {
  let database: TestDatabase;
  let jwks: JwksServer;
  let app: TestApp | undefined;
  let logLines: Array<{ level: number; msg: string }>;
  let first: SigningKey;
  let second: SigningKey;

  const start = (extra: Record<string, string> = {}) => {
    logLines = [];
    const sink = new Writable({
      write(chunk: Buffer, _encoding, done) {
        for (const line of chunk.toString().split('\n').filter(Boolean))
          logLines.push(JSON.parse(line) as { level: number; msg: string });
        done();
      },
    });
    return startTestApp(
      database,
      {
        AUTH_MODE: 'jwt',
        AUTH_JWKS_URL: jwks.url,
        AUTH_JWT_ISSUER: ISSUER,
        AUTH_JWT_AUDIENCE: AUDIENCE,
        AUTH_JWKS_COOLDOWN_SECONDS: '0',
        ...extra,
      },
      createLogger('pulse-api', 'info', sink),
    );
  };
  const status = async (token: string) => {
    const response = await app!.get('/status/7', bearer(token));
    const body = (await response.json()) as { error?: { code: string } };
    return {
      status: response.status,
      code: body.error?.code,
      retryAfter: response.headers.get('retry-after'),
    };
  };
  const jwksWarnings = () => logLines.filter((l) => l.level === 40 && /JWKS/.test(l.msg));

  before(async () => {
    database = await createTestDatabase();
    first = await signingKey('key-1', 'RS256');
    second = await signingKey('key-2', 'ES256');
  });
  beforeEach(async () => {
    jwks = new JwksServer();
    await jwks.start();
  });
  afterEach(async () => {
    await app?.close();
    app = undefined;
    await jwks.stop();
  });
  after(async () => {
    await database.drop();
  });

  it('verifies tokens with the published key and follows a rotation', async () => {
    jwks.published = [first];
    app = await start();
    expect(await status(await first.minter.user(7))).to.deep.include({ status: 200 });
    // A token signed with a key not published: refused, not accepted.
    expect(await status(await second.minter.user(7))).to.deep.include({
      status: 401,
      code: 'invalid_token',
    });

    // Rotation: the provider publishes key-2 and retires key-1.
    jwks.published = [second];
    const before = jwks.fetches;
    expect(await status(await second.minter.user(7))).to.deep.include({ status: 200 });
    expect(jwks.fetches).to.equal(before + 1);
    expect(await status(await first.minter.user(7))).to.deep.include({
      status: 401,
      code: 'invalid_token',
    });
  });

  it('keeps the last good keys while the endpoint is down, refuses unknown keys with 503, and logs once', async () => {
    jwks.published = [first];
    app = await start({ AUTH_JWKS_CACHE_SECONDS: '1' });
    const good = await first.minter.user(7);
    expect(await status(good)).to.deep.include({ status: 200 });

    jwks.down = true;
    // The cache goes stale within a second: requests then fetch again, fail, and keep the old keys.
    await waitFor('a failed fetch of the stale key set', async () => {
      expect(await status(good)).to.deep.include({ status: 200 });
      return jwks.failedFetches > 0;
    });
    expect(await status(good)).to.deep.include({ status: 200 });
    // Rotated in while the endpoint is down: cannot be verified, so refused (never accepted).
    jwks.published = [first, second];
    const rotated = await second.minter.user(7);
    expect(await status(rotated)).to.deep.equal({
      status: 503,
      code: 'auth_unavailable',
      retryAfter: '1',
    });
    expect(await status(rotated)).to.deep.include({ status: 503, code: 'auth_unavailable' });
    expect(jwks.failedFetches).to.be.greaterThan(1);
    expect(jwksWarnings().map((l) => l.msg)).to.deep.equal([
      'the JWKS endpoint cannot be reached: the last good keys stay in use; tokens signed with another key are refused with 503 auth_unavailable',
    ]);

    jwks.down = false;
    expect(await status(rotated)).to.deep.include({ status: 200 });
    expect(logLines.filter((l) => /answers again/.test(l.msg))).to.have.length(1);
  });

  it('refuses every token with 503 while no keys were ever fetched', async () => {
    jwks.published = [first];
    jwks.down = true;
    app = await start({ AUTH_JWKS_COOLDOWN_SECONDS: '30' });
    await waitFor('the fetch at start', () => jwks.failedFetches === 1);
    expect(await status(await first.minter.user(7))).to.deep.equal({
      status: 503,
      code: 'auth_unavailable',
      retryAfter: '30',
    });
    // Within the cooldown, no request fetches again.
    expect(jwks.failedFetches).to.equal(1);
    expect(jwksWarnings()).to.have.length(1);
  });

  it('accepts only an https URL, or http on a loopback host, and exactly one key source', () => {
    const base = { DATABASE_URL: 'postgres://p@127.0.0.1/p', AUTH_MODE: 'jwt' };
    const problems = (env: Record<string, string>) => {
      try {
        loadApiConfig({ ...base, ...env });
        return [];
      } catch (error) {
        return (error as ConfigError).problems;
      }
    };
    expect(problems({ AUTH_JWKS_URL: 'https://idp.example.com/jwks' })).to.deep.equal([]);
    expect(problems({ AUTH_JWKS_URL: 'http://127.0.0.1:8080/jwks' })).to.deep.equal([]);
    expect(problems({ AUTH_JWKS_URL: 'http://idp.example.com/jwks' })[0]).to.match(
      /^AUTH_JWKS_URL must be an https:\/\/ URL/,
    );
    expect(problems({ AUTH_JWKS_URL: 'not a url' })[0]).to.match(/^AUTH_JWKS_URL must be/);
    expect(
      problems({ AUTH_JWKS_URL: 'https://idp.example.com/jwks', AUTH_JWT_SECRET: 'x'.repeat(32) }),
    ).to.deep.equal([
      'AUTH_JWKS_URL and AUTH_JWT_SECRET are both set: set exactly one (HS256 secret, RS256/ES256 public key, or a JWKS URL) (got "https://idp.example.com/jwks")',
    ]);
  });
});

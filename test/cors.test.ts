import { expect } from 'chai';
import { ConfigError, loadApiConfig } from '../lib/infra/config.ts';
import { startTestApp, type TestApp } from './support/app.ts';
import { createTestDatabase, type TestDatabase } from './support/database.ts';
import { bearer, hs256, jwtEnv, randomSecret, type TokenMinter } from './support/tokens.ts';

const APP = 'https://app.example.com';
const LOCAL = 'http://127.0.0.1:8080';

function corsProblems(value: string): string[] {
  try {
    loadApiConfig({ DATABASE_URL: 'postgres://u@127.0.0.1/pulse', CORS_ORIGINS: value });
  } catch (error) {
    expect(error).to.be.instanceOf(ConfigError);
    return (error as ConfigError).problems;
  }
  return [];
}

function preflight(app: TestApp, path: string, origin: string): Promise<Response> {
  return fetch(app.baseUrl + path, {
    method: 'OPTIONS',
    headers: {
      origin,
      'access-control-request-method': 'POST',
      'access-control-request-headers': 'authorization, content-type',
    },
  });
}

describe('CORS (CORS_ORIGINS)', () => {
  describe('configuration', () => {
    it('is empty by default and reads exact origins, comma-separated', () => {
      const base = { DATABASE_URL: 'postgres://u@127.0.0.1/pulse' };
      expect(loadApiConfig(base).CORS_ORIGINS).to.deep.equal([]);
      expect(
        loadApiConfig({ ...base, CORS_ORIGINS: ` ${APP}, ${LOCAL} ,${APP}` }).CORS_ORIGINS,
      ).to.deep.equal([APP, LOCAL]);
    });

    for (const bad of ['*', `${APP}/`, `${APP}/app`, 'ftp://files.example.com', 'example.com']) {
      it(`refuses ${JSON.stringify(bad)} with a message naming the variable`, () => {
        const problems = corsProblems(`${LOCAL},${bad}`);
        expect(problems).to.have.length(1);
        expect(problems[0]).to.match(/^CORS_ORIGINS must list exact origins/);
      });
    }
  });

  describe('with no origins listed (the default)', () => {
    let database: TestDatabase;
    let app: TestApp;
    before(async () => {
      database = await createTestDatabase();
      app = await startTestApp(database);
    });
    after(async () => {
      await app.close();
      await database.drop();
    });

    it('sends no CORS header, and a preflight finds no route', async () => {
      const response = await app.get('/status/1', { origin: APP });
      expect(response.status).to.equal(200);
      expect(response.headers.get('access-control-allow-origin')).to.equal(null);
      const answer = await preflight(app, '/status/update', APP);
      expect(answer.status).to.equal(404);
      expect(answer.headers.get('access-control-allow-origin')).to.equal(null);
    });
  });

  describe('with origins listed, AUTH_MODE=jwt', () => {
    let database: TestDatabase;
    let app: TestApp;
    let minter: TokenMinter;
    before(async () => {
      database = await createTestDatabase();
      const secret = randomSecret();
      minter = hs256(secret);
      app = await startTestApp(database, jwtEnv(secret, { CORS_ORIGINS: `${APP},${LOCAL}` }));
    });
    after(async () => {
      await app.close();
      await database.drop();
    });

    it('answers a preflight from a listed origin before authentication, without credentials', async () => {
      const response = await preflight(app, '/status/update', APP);
      expect(response.status).to.equal(204);
      expect(response.headers.get('access-control-allow-origin')).to.equal(APP);
      expect(response.headers.get('access-control-allow-methods')).to.include('POST');
      expect(response.headers.get('access-control-allow-headers')).to.match(
        /authorization.*content-type/,
      );
      expect(response.headers.get('access-control-max-age')).to.equal('600');
      expect(response.headers.get('access-control-allow-credentials')).to.equal(null);
      expect(response.headers.get('vary')).to.match(/origin/i);
    });

    it('logs a preflight with its request id, but neither times it nor adds security headers', async () => {
      const response = await preflight(app, '/status/update', APP);
      expect(response.status).to.equal(204);
      expect(response.headers.get('x-request-id')).to.match(/^[0-9a-f-]{36}$/);
      expect(response.headers.get('content-security-policy')).to.equal(null);
      await fetch(`${app.baseUrl}/healthz`); // a request that is timed, to compare with
      const metrics = await (await fetch(`${app.baseUrl}/metrics`)).text();
      expect(metrics).not.to.match(/pulse_http_request_duration_seconds_count\{method="OPTIONS"/);
      expect(metrics).to.match(
        /pulse_http_request_duration_seconds_count\{method="GET",route="\/healthz"/,
      );
    });

    it('lets a listed origin read answers, errors and Retry-After', async () => {
      const token = await minter.sign({ claims: { sub: '5' } });
      const ok = await app.post(
        '/status/update',
        { user_id: 5 },
        { origin: LOCAL, ...bearer(token) },
      );
      expect(ok.status).to.equal(200);
      expect(ok.headers.get('access-control-allow-origin')).to.equal(LOCAL);
      expect(ok.headers.get('access-control-expose-headers')).to.match(/retry-after/i);
      expect(ok.headers.get('access-control-allow-credentials')).to.equal(null);
      const refused = await app.get('/status/5', { origin: APP });
      expect(refused.status).to.equal(401);
      expect(refused.headers.get('access-control-allow-origin')).to.equal(APP);
      expect(refused.headers.get('access-control-expose-headers')).to.match(/www-authenticate/i);
    });

    it('gives nothing to an origin that is not listed exactly', async () => {
      for (const origin of [
        'https://evil.example.net',
        'http://app.example.com',
        'https://app.example.com.evil.example.net',
        'https://app.example.com:8443',
        'null',
      ]) {
        const response = await preflight(app, '/status/update', origin);
        expect(response.headers.get('access-control-allow-origin'), origin).to.equal(null);
        const get = await app.get('/status/1', { origin });
        expect(get.headers.get('access-control-allow-origin'), origin).to.equal(null);
      }
    });
  });
});

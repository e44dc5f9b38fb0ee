import { expect } from 'chai';
import { createTestDatabase, type TestDatabase } from './support/database.ts';
import { startEntryPoint } from './support/entry-points.ts';
import { freePort } from './support/server.ts';
import { randomSecret } from './support/tokens.ts';

describe('the API with its own metrics listener (METRICS_PORT)', function () {
  this.timeout(60_000);
  let database: TestDatabase;
  before(async () => {
    database = await createTestDatabase();
  });
  after(async () => {
    await database.drop();
  });

  it('serves /metrics on METRICS_PORT only, never on the public port, with AUTH_MODE=jwt', async () => {
    const [port, metricsPort] = [await freePort(), await freePort()];
    const api = startEntryPoint('api', {
      env: {
        DATABASE_URL: database.url,
        PORT: String(port),
        METRICS_PORT: String(metricsPort),
        AUTH_MODE: 'jwt',
        AUTH_JWT_SECRET: randomSecret(),
      },
    });
    await api.waitForOutput('pulse api listening', { timeoutMs: 45_000 });
    expect(api.stdout()).to.include(`"metrics":"http://127.0.0.1:${metricsPort}/metrics"`);
    const publicBase = `http://127.0.0.1:${port}`;
    const metricsBase = `http://127.0.0.1:${metricsPort}`;
    expect((await fetch(`${publicBase}/status/1`)).status).to.equal(401);
    expect((await fetch(`${publicBase}/metrics`)).status).to.equal(404);
    expect((await fetch(`${publicBase}/readyz`)).status).to.equal(200);
    const metrics = await fetch(`${metricsBase}/metrics`);
    expect(metrics.status).to.equal(200);
    const scraped = await metrics.text();
    // The 401 is answered inside the route (authentication is its first handler), so it is counted
    // under the route's pattern.
    expect(scraped).to.match(
      /^pulse_http_request_duration_seconds_count\{method="GET",route="\/status\/:userId",status_code="401"\} 1$/m,
    );
    expect(scraped).not.to.match(/route="unmatched",status_code="401"/);
    expect((await fetch(`${metricsBase}/readyz`)).status).to.equal(200);
    expect(await api.stop('SIGTERM')).to.deep.equal({ code: 0, signal: null });
  });
});

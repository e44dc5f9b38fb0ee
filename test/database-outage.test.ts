import { expect } from 'chai';
import { openDatabase, type DatabaseHandle } from '../lib/infra/db.ts';
import { startTestApp, type TestApp } from './support/app.ts';
import {
  createTestDatabase,
  lockPulse,
  silentLogger,
  type TestDatabase,
} from './support/database.ts';
import { waitFor } from './support/entry-points.ts';
import { startTcpProxy, type TcpProxy } from './support/tcp-proxy.ts';

describe('database outage', () => {
  let database: TestDatabase;
  let proxy: TcpProxy;
  let behindProxy: DatabaseHandle & { url: string };
  let app: TestApp;

  before(async () => {
    database = await createTestDatabase();
    const target = new URL(database.url);
    proxy = await startTcpProxy({ targetHost: target.hostname, targetPort: Number(target.port) });
    const url = proxy.rewriteUrl(database.url);
    behindProxy = {
      ...openDatabase({
        connectionString: url,
        poolMax: 4,
        applicationName: 'test',
        logger: silentLogger,
      }),
      url,
    };
    // No offline detector: its ticks would keep opening connections the pool test counts.
    app = await startTestApp(behindProxy, { OFFLINE_DETECTOR: 'false' });
  });
  after(async () => {
    await app.close();
    await behindProxy.close();
    await proxy.close();
    await database.drop();
  });

  async function expectUnavailable(response: Response): Promise<void> {
    expect(response.status).to.equal(503);
    expect(response.headers.get('retry-after')).to.equal('1');
    expect(await response.json()).to.deep.equal({
      error: { code: 'database_unavailable', message: 'the database is unavailable, retry later' },
    });
  }

  it('answers 503 database_unavailable while the database is down, then recovers by itself', async () => {
    expect((await app.post('/status/update', { user_id: 1 })).status).to.equal(200);
    expect((await app.get('/status/1')).status).to.equal(200);

    // Down: every open connection is cut and new ones are refused.
    proxy.refuse();
    proxy.dropConnections();
    await expectUnavailable(await app.get('/status/1'));
    await expectUnavailable(await app.post('/status/update', { user_id: 2 }));
    await expectUnavailable(await app.post('/status/batch', [{ user_id: 1 }]));
    await expectUnavailable(await app.post('/status/update', [{ user_id: 3 }, { user_id: 4 }]));
    expect((await app.get('/readyz')).status).to.equal(503);
    expect((await app.get('/healthz')).status).to.equal(200); // the process is alive

    // Back: the same process serves again, with no restart.
    proxy.accept();
    expect(await (await app.get('/status/1')).json()).to.deep.include({
      user_id: 1,
      is_online: true,
    });
    expect((await app.post('/status/update', { user_id: 2 })).status).to.equal(200);
    expect((await app.get('/readyz')).status).to.equal(200);
    // Nothing refused was written; everything accepted was.
    expect(await database.userIds()).to.deep.equal([1, 2]);
  });

  it('answers 503 when a statement outlives the statement timeout, and serves again after', async () => {
    const impatient = openDatabase({
      connectionString: database.url,
      poolMax: 2,
      applicationName: 'test',
      logger: silentLogger,
      statementTimeoutMs: 200,
    });
    const impatientApp = await startTestApp({ ...impatient, url: database.url });
    const release = await lockPulse(database.url, 'ACCESS EXCLUSIVE'); // even reads wait
    try {
      const started = Date.now();
      await expectUnavailable(await impatientApp.get('/status/1'));
      expect(Date.now() - started).to.be.below(5_000);
      await release();
      expect((await impatientApp.get('/status/1')).status).to.equal(200);
    } finally {
      await release().catch(() => undefined); // already released when the test passed
      await impatientApp.close();
      await impatient.close();
    }
  });

  it('survives connections dropped while idle in the pool', async () => {
    expect((await app.get('/status/1')).status).to.equal(200);
    const pool = behindProxy.pool;
    expect(pool.idleCount, 'an idle pooled connection').to.be.above(0);
    const accepted = proxy.acceptedCount;
    proxy.dropConnections(); // idle pooled clients lose their socket: the pool's error handler
    await waitFor('the pool to discard its dead clients', () => pool.totalCount === 0);
    // The process is alive, and the same pool connects afresh.
    for (let i = 0; i < 3; i += 1) expect((await app.get('/status/1')).status).to.equal(200);
    expect(proxy.acceptedCount).to.be.above(accepted);
  });
});

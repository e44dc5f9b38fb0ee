import { expect } from 'chai';
import { sql } from 'kysely';
import { openDatabase } from '../lib/infra/db.ts';
import { startTestApp, type TestApp } from './support/app.ts';
import { createTestDatabase, silentLogger, type TestDatabase } from './support/database.ts';
import { adminQuery, freePort, uniqueName, withDatabase } from './support/server.ts';
import { serverUrl } from './support/database.ts';
import { metricValue } from './support/metrics.ts';

const sample = metricValue;

describe('operations endpoints', () => {
  let database: TestDatabase;
  let app: TestApp;
  beforeEach(async () => {
    database = await createTestDatabase();
    app = await startTestApp(database);
  });
  afterEach(async () => {
    await app.close();
    await database.drop();
  });

  it('GET /healthz answers 200 while the process runs', async () => {
    const response = await app.get('/healthz');
    expect(response.status).to.equal(200);
    expect(await response.json()).to.deep.equal({ status: 'ok' });
  });

  it('GET /readyz answers 200 when the database answers and is migrated', async () => {
    const response = await app.get('/readyz');
    expect(response.status).to.equal(200);
    expect(await response.json()).to.deep.equal({ status: 'ready' });
  });

  it('GET /readyz answers 503 naming the pending migration on an unmigrated database', async () => {
    const name = uniqueName('pulse_unmigrated');
    await adminQuery(serverUrl(), `CREATE DATABASE ${name}`);
    const url = withDatabase(serverUrl(), name);
    const empty = openDatabase({
      connectionString: url,
      poolMax: 2,
      applicationName: 'test',
      logger: silentLogger,
    });
    const unmigrated = await startTestApp({ ...empty, url });
    try {
      const response = await unmigrated.get('/readyz');
      expect(response.status).to.equal(503);
      const body = (await response.json()) as { error: { code: string; message: string } };
      expect(body.error.code).to.equal('not_ready');
      expect(body.error.message).to.match(
        /migrations pending: 0001_create_pulse, 0002_sweeper_lease, 0003_presence_settings, 0004_last_seen, 0005_distribute_by_user_id, 0006_presence_events$/,
      );
    } finally {
      await unmigrated.close();
      await empty.close();
      await adminQuery(serverUrl(), `DROP DATABASE ${name} WITH (FORCE)`);
    }
  });

  it('GET /readyz answers 503 naming the table when a migrated table is missing', async () => {
    await sql`ALTER TABLE pulse RENAME TO pulse_elsewhere`.execute(database.db);
    try {
      const response = await app.get('/readyz');
      expect(response.status).to.equal(503);
      expect(await response.json()).to.deep.equal({
        error: { code: 'not_ready', message: 'tables missing: pulse' },
      });
    } finally {
      await sql`ALTER TABLE pulse_elsewhere RENAME TO pulse`.execute(database.db);
    }
    expect((await app.get('/readyz')).status).to.equal(200);
  });

  it('GET /readyz answers 503 when the database cannot be reached', async () => {
    const url = `postgres://postgres@127.0.0.1:${await freePort()}/nowhere`;
    const unreachable = openDatabase({
      connectionString: url,
      poolMax: 1,
      applicationName: 'test',
      logger: silentLogger,
    });
    const lonely = await startTestApp({ ...unreachable, url });
    try {
      const response = await lonely.get('/readyz');
      expect(response.status).to.equal(503);
      const body = (await response.json()) as { error: { code: string; message: string } };
      expect(body.error).to.deep.equal({ code: 'not_ready', message: 'database unavailable' });
      expect((await lonely.get('/healthz')).status).to.equal(200);
    } finally {
      await lonely.close();
      await unreachable.close();
    }
  });

  it('GET /metrics exposes the named series and they move with traffic', async () => {
    const before = await (await app.get('/metrics')).text();
    const pool = database.pool; // the app's pool: the gauge reads it at scrape time
    expect(sample(before, 'pulse_heartbeats_accepted_total')).to.equal(0);
    expect(sample(before, 'pulse_pg_pool_connections{state="total"}')).to.equal(pool.totalCount);
    expect(sample(before, 'pulse_pg_pool_connections{state="idle"}')).to.equal(pool.idleCount);
    expect(sample(before, 'pulse_pg_pool_connections{state="waiting"}')).to.equal(0);
    expect(sample(before, 'pulse_heartbeat_queue_ids')).to.equal(0);

    await app.post('/status/update', { user_id: 1 });
    await app.post('/status/update', [{ user_id: 2 }, { user_id: 3 }]);
    await app.get('/status/1');
    await app.get('/status/nope');

    const after = await (await app.get('/metrics')).text();
    expect(sample(after, 'pulse_heartbeats_accepted_total')).to.equal(3);
    // One flush per heartbeat request (they were sent one after the other): 1 id, then 2.
    expect(sample(after, 'pulse_heartbeat_flush_ids_count')).to.equal(2);
    expect(sample(after, 'pulse_heartbeat_flush_ids_sum')).to.equal(3);
    expect(sample(after, 'pulse_heartbeat_flush_duration_seconds_count{outcome="ok"}')).to.equal(2);
    expect(
      sample(
        after,
        'pulse_http_request_duration_seconds_count{method="POST",route="/status/update",status_code="200"}',
      ),
    ).to.equal(2);
    expect(
      sample(
        after,
        'pulse_http_request_duration_seconds_count{method="GET",route="/status/:userId",status_code="200"}',
      ),
    ).to.equal(1);
    expect(
      sample(
        after,
        'pulse_http_request_duration_seconds_count{method="GET",route="/status/:userId",status_code="400"}',
      ),
    ).to.equal(1);
    expect(after).not.to.match(/route="\/status\/1"/); // user ids never become labels
    // The pool opened connections for the writes and keeps them.
    expect(pool.totalCount).to.be.above(0);
    expect(sample(after, 'pulse_pg_pool_connections{state="total"}')).to.equal(pool.totalCount);
    expect(after).to.match(/^process_resident_memory_bytes /m);
  });

  it('sends X-Request-Id, echoing a sane one from the client', async () => {
    const generated = await app.get('/status/1');
    expect(generated.headers.get('x-request-id')).to.match(/^[0-9a-f-]{36}$/);
    const echoed = await fetch(`${app.baseUrl}/status/1`, {
      headers: { 'x-request-id': 'abc-123' },
    });
    expect(echoed.headers.get('x-request-id')).to.equal('abc-123');
    const replaced = await fetch(`${app.baseUrl}/status/1`, {
      headers: { 'x-request-id': 'bad id <script>' },
    });
    expect(replaced.headers.get('x-request-id')).to.match(/^[0-9a-f-]{36}$/);
  });
});

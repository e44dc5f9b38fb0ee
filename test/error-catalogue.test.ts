/**
 * The error catalogue (http/error-catalogue.ts) is the one list of codes: every code is produced by
 * a real request here (request_aborted, whose client is gone, through the handler's own mapping),
 * each answer matches the served contract, and docs/api.md's table is the catalogue's.
 */
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { connect } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Ajv2020, type ValidateFunction } from 'ajv/dist/2020.js';
import { expect } from 'chai';
import express from 'express';
import { sql } from 'kysely';
import { demoRoutes } from '../api/demo.ts';
import { errorHandler, toHttpError } from '../api/edge/errors.ts';
import { securityHeaders } from '../api/edge/security-headers.ts';
import { assembleApi } from '../api/assemble.ts';
import { errorBody, errorCatalogue, errorCodes, type ErrorCode } from '../http/error-catalogue.ts';
import { listen } from '../http/server.ts';
import { loadApiConfig } from '../lib/infra/config.ts';
import { openDatabase } from '../lib/infra/db.ts';
import { apiDoc, withErrorTable } from '../scripts/error-table.ts';
import { restoreSettingsRow } from '../lib/store/pulse-store.ts';
import { startTestApp, type TestApp } from './support/app.ts';
import {
  createTestDatabase,
  lockPulse,
  silentLogger,
  type TestDatabase,
} from './support/database.ts';
import { waitFor } from './support/entry-points.ts';
import { freePort } from './support/server.ts';
import { asymmetric, bearer, hs256, jwtEnv, randomSecret } from './support/tokens.ts';

describe('the error catalogue: every code, as the contract says', () => {
  let database: TestDatabase;
  let brokenDatabase: TestDatabase;
  let validateBody: ValidateFunction;
  const produced = new Set<ErrorCode>();
  const apps: TestApp[] = [];
  const start = async (env: Record<string, string> = {}, on: TestDatabase = database) => {
    const app = await startTestApp(on, env);
    apps.push(app);
    return app;
  };

  before(async () => {
    database = await createTestDatabase();
    brokenDatabase = await createTestDatabase();
    const app = await start();
    // The contract as served, not as imported: what a generated client reads.
    const served = (await (await app.get('/openapi.json')).json()) as {
      components: { schemas: Record<string, object> };
    };
    validateBody = new Ajv2020({ strict: false }).compile({
      $ref: '#/components/schemas/Error',
      components: served.components,
    });
  });
  after(async () => {
    for (const app of apps) await app.close();
    await database.drop();
    await brokenDatabase.drop();
  });

  async function expectCode(response: Response | Promise<Response>, code: ErrorCode) {
    const answer = await response;
    const body: unknown = await answer.json();
    expect(body, `expected ${code}`).to.have.nested.property('error.code', code);
    expect(answer.status, code).to.equal(errorCatalogue[code].status);
    expect(validateBody(body), `${code}: ${JSON.stringify(validateBody.errors)}`).to.equal(true);
    if (answer.status === 503) expect(answer.headers.get('retry-after'), code).to.match(/^\d+$/);
    produced.add(code);
  }

  it('answers each client mistake with its code', async () => {
    const app = await start({ BATCH_MAX_IDS: '3', BODY_LIMIT_BYTES: '1024' });
    await expectCode(app.post('/status/update', { user_id: 0 }), 'invalid_user_id');
    await expectCode(app.post('/status/update', { user_id: 1, device_id: '' }), 'invalid_device');
    await expectCode(app.post('/status/batch', { user_id: 1 }), 'invalid_body');
    await expectCode(app.post('/status/update', '{'), 'invalid_json');
    await expectCode(app.get('/status/%E0%A4%A'), 'invalid_path');
    await expectCode(app.get('/no/such/route'), 'not_found');
    await expectCode(
      app.post(
        '/status/batch',
        [1, 2, 3, 4].map((id) => ({ user_id: id })),
      ),
      'too_many_ids',
    );
    await expectCode(
      app.post('/status/update', { user_id: 1, pad: 'x'.repeat(2000) }),
      'payload_too_large',
    );
    await expectCode(
      app.post('/status/update', 'user_id=1', { 'content-type': 'text/plain' }),
      'unsupported_media_type',
    );
  });

  it('answers each refused token with its code', async () => {
    const secret = randomSecret();
    const app = await start(jwtEnv(secret));
    const token = await hs256(secret).user(5);
    await expectCode(app.post('/status/update', { user_id: 5 }), 'unauthorized');
    await expectCode(
      app.post('/status/update', { user_id: 5 }, { authorization: 'Bearer a.b.c' }),
      'invalid_token',
    );
    await expectCode(app.post('/status/update', { user_id: 6 }, bearer(token)), 'forbidden');
    await expectCode(
      app.get(`/status/stream?watch=5&access_token=${token}`, bearer(token)),
      'invalid_request',
    );
  });

  it('answers per-caller limits, and keys that cannot be fetched', async () => {
    const secret = randomSecret();
    const capped = await start(
      jwtEnv(secret, {
        STREAM_MAX_OPEN_PER_CALLER: '1',
        READ_IDS_PER_SECOND_PER_CALLER: '1',
        BATCH_MAX_IDS: '2',
      }),
    );
    const token = bearer(await hs256(secret).user(5));
    const held = new AbortController();
    const first = await fetch(`${capped.baseUrl}/status/stream?watch=5`, {
      headers: token,
      signal: held.signal,
    });
    expect(first.status).to.equal(200);
    try {
      await expectCode(capped.get('/status/stream?watch=5', token), 'too_many_streams_per_caller');
    } finally {
      held.abort();
    }
    // A budget of 2 ids, refilled at 1 a second: two reads of 2 in a row cannot both pass.
    const two = [{ user_id: 1 }, { user_id: 2 }];
    expect((await capped.post('/status/batch', two, token)).status).to.be.oneOf([200, 429]);
    await expectCode(capped.post('/status/batch', two, token), 'too_many_reads_per_caller');

    // Nothing listens there: no key was ever fetched, so no token can be verified.
    const noKeys = await start({
      AUTH_MODE: 'jwt',
      AUTH_JWKS_URL: `http://127.0.0.1:${await freePort()}/jwks.json`,
    });
    const { minter } = await asymmetric('RS256');
    await expectCode(noKeys.get('/status/5', bearer(await minter.user(5))), 'auth_unavailable');
  });

  it('answers refusals of a process at its limits or stopping', async () => {
    const noStreams = await start({ STREAM_MAX_OPEN: '0' });
    await expectCode(noStreams.get('/status/stream?watch=1'), 'too_many_streams');

    const stopping = await start();
    await stopping.heartbeats.close();
    await expectCode(stopping.post('/status/update', { user_id: 1 }), 'shutting_down');

    // One flush waits on a lock; the queue behind it fills (queue_full), then waits too long
    // for admission (overloaded).
    const queued = await start({
      HEARTBEAT_FLUSH_MAX_IDS: '1',
      HEARTBEAT_MAX_CONCURRENT_FLUSHES: '1',
      HEARTBEAT_QUEUE_MAX_IDS: '1',
      MAX_QUEUE_WAIT_MS: '200',
    });
    const release = await lockPulse(database.url);
    const held: Promise<Response>[] = [];
    try {
      held.push(queued.post('/status/update', { user_id: 11 }));
      await waitFor('a flush waiting on the lock', async () => (await database.lockWaiters()) > 0);
      held.push(queued.post('/status/update', { user_id: 12 }));
      await waitFor('a queued heartbeat', () => queued.heartbeats.queuedIds === 1);
      await expectCode(queued.post('/status/update', { user_id: 13 }), 'queue_full');
      await waitFor('a long queue wait', () => queued.heartbeats.oldestQueuedMs() > 200);
      await expectCode(queued.post('/status/update', { user_id: 14 }), 'overloaded');
    } finally {
      await release();
    }
    for (const response of await Promise.all(held)) expect(response.status).to.equal(200);
  });

  it('answers a body that never arrives, and a request the database cannot answer in time', async () => {
    const app = await start({ REQUEST_BODY_TIMEOUT_MS: '200', REQUEST_DEADLINE_MS: '300' });
    // Headers announcing a body that is never sent: the answer comes on the raw socket.
    const socket = connect(Number(new URL(app.baseUrl).port), '127.0.0.1');
    let raw = '';
    socket.on('data', (chunk: Buffer) => (raw += chunk.toString()));
    socket.write(
      'POST /status/update HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n{',
    );
    await once(socket, 'close');
    const [head = '', body = ''] = raw.split('\r\n\r\n');
    const status = Number(/^HTTP\/1\.1 (\d+)/.exec(head)?.[1]);
    await expectCode(
      new Response(body, { status, headers: { 'content-type': 'application/json' } }),
      'body_timeout',
    );

    const release = await lockPulse(database.url);
    try {
      await expectCode(app.post('/status/update', { user_id: 21 }), 'deadline_exceeded');
    } finally {
      await release();
    }
  });

  it('answers a database that is gone, broken or unmigrated', async () => {
    await sql`DROP TABLE pulse CASCADE`.execute(brokenDatabase.db);
    const broken = await start({}, brokenDatabase);
    await expectCode(broken.post('/status/update', { user_id: 1 }), 'write_failed');
    await expectCode(broken.get('/readyz'), 'not_ready');
    await expectCode(broken.get('/status/1'), 'internal_error');

    // The settings row deleted by hand: no threshold, so no read can be answered truthfully.
    const unset = await start();
    await database.putRow(1, 0);
    await sql`DELETE FROM pulse_settings`.execute(database.db);
    try {
      await expectCode(unset.get('/status/1'), 'settings_missing');
    } finally {
      await restoreSettingsRow(database.db);
    }

    // Nothing listens on this port: every statement fails to connect.
    const url = `postgres://postgres@127.0.0.1:${await freePort()}/postgres`;
    const gone = openDatabase({
      connectionString: url,
      poolMax: 1,
      applicationName: 'pulse-test',
      logger: silentLogger,
    });
    const config = loadApiConfig({ DATABASE_URL: url });
    const api = assembleApi(gone, config, silentLogger);
    const server = await listen(api.app, 0, '127.0.0.1');
    try {
      await expectCode(fetch(`http://127.0.0.1:${server.port}/status/1`), 'database_unavailable');
    } finally {
      await api.streams.close();
      api.admission.close();
      await server.stop();
      await api.heartbeats.close();
      await gone.close();
    }
  });

  it('answers the demo page of a checkout whose client was not built', async () => {
    const emptyClient = mkdtempSync(path.join(tmpdir(), 'pulse-client-'));
    const app = express();
    app.use(demoRoutes(securityHeaders().document, emptyClient).router);
    app.use(errorHandler);
    const server = await listen(app, 0, '127.0.0.1');
    try {
      await expectCode(fetch(`http://127.0.0.1:${server.port}/demo/`), 'client_not_built');
    } finally {
      await server.stop();
      rmSync(emptyClient, { recursive: true });
    }
  });

  it('maps an aborted body, which no client stays to read, to request_aborted', () => {
    const error = toHttpError(Object.assign(new Error('aborted'), { type: 'request.aborted' }));
    expect(error.code).to.equal('request_aborted');
    expect(error.status).to.equal(400);
    expect(validateBody(errorBody(error.code, error.message))).to.equal(true);
    produced.add(error.code);
  });

  it('produced every catalogued code, and the contract lists exactly these', () => {
    expect([...produced].sort()).to.deep.equal([...errorCodes].sort());
    const codeSchema = validateBody.schema as {
      components: { schemas: { Error: { properties: { error: { properties: object } } } } };
    };
    const served = JSON.stringify(codeSchema.components.schemas.Error);
    for (const code of errorCodes) expect(served).to.include(`"${code}"`);
  });

  it("docs/api.md's error table is the catalogue's (npm run docs:errors writes it)", () => {
    const doc = readFileSync(apiDoc, 'utf8');
    expect(withErrorTable(doc)).to.equal(doc);
  });
});

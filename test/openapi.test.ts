import { expect } from 'chai';
import { Ajv2020 } from 'ajv/dist/2020.js';
import { sql } from 'kysely';
import { openApiDocument } from '../api/openapi.ts';
import { startTestApp, type TestApp } from './support/app.ts';
import { createTestDatabase, type TestDatabase } from './support/database.ts';
import { bearer, hs256, jwtEnv, randomSecret } from './support/tokens.ts';

type Operation = {
  responses: Record<string, { content?: Record<string, { schema: object }>; headers?: object }>;
};
const paths = openApiDocument.paths as unknown as Record<string, Record<string, Operation>>;
const ajv = new Ajv2020({ strict: false, allErrors: true });

function operationFor(method: string, pathAndQuery: string): [string, Operation] {
  const path = pathAndQuery.split('?')[0]!;
  for (const [template, operations] of Object.entries(paths)) {
    const pattern = new RegExp(`^${template.replace(/\{[^}]+\}/g, '[^/]+')}$`);
    const operation = operations[method.toLowerCase()];
    // A literal path (/status/batch) wins over a template (/status/{user_id}).
    if (
      operation &&
      (template === path || (pattern.test(path) && !paths[path]?.[method.toLowerCase()]))
    ) {
      return [template, operation];
    }
  }
  throw new Error(`${method} ${path} is not in the OpenAPI document`);
}

describe('OpenAPI contract', () => {
  let database: TestDatabase;
  let app: TestApp;
  let securedApp: TestApp;
  let limitedApp: TestApp;
  const secret = randomSecret();
  const tokens = hs256(secret);
  const exercised = new Set<string>();

  before(async () => {
    database = await createTestDatabase();
    app = await startTestApp(database, { BATCH_MAX_IDS: '3', BODY_LIMIT_BYTES: '1024' });
    securedApp = await startTestApp(database, jwtEnv(secret));
    limitedApp = await startTestApp(database, { STREAM_MAX_OPEN: '0' });
  });
  after(async () => {
    await app.close();
    await securedApp.close();
    await limitedApp.close();
    await database.drop();
  });

  /** Sends a real request and checks the answer's status, content type and body against the document. */
  async function check(
    method: 'GET' | 'POST' | 'PUT',
    path: string,
    body?: string,
    contentType = 'application/json',
    { target = app, headers = {} }: { target?: TestApp; headers?: Record<string, string> } = {},
  ) {
    const response = await fetch(target.baseUrl + path, {
      method,
      headers: { ...(body === undefined ? {} : { 'content-type': contentType }), ...headers },
      ...(body === undefined ? {} : { body }),
    });
    const [template, operation] = operationFor(method, path);
    const documented = operation.responses[String(response.status)];
    expect(documented, `${method} ${path} answered ${response.status}, which is not documented`).to
      .exist;
    const mediaType = (response.headers.get('content-type') ?? '').split(';')[0]!;
    const content = documented!.content?.[mediaType];
    expect(content, `${method} ${path} ${response.status} sent ${mediaType}`).to.exist;
    if (mediaType === 'text/event-stream') {
      // The first event is the snapshot: its data must be what the document says.
      const reader = (response.body as ReadableStream<Uint8Array>).getReader();
      let text = '';
      while (!/\n\n(?:event: snapshot\ndata: .*\n\n)/.test(text)) {
        const { value, done } = await reader.read();
        if (done) break;
        text += new TextDecoder().decode(value);
      }
      await reader.cancel();
      const data: unknown = JSON.parse(/event: snapshot\ndata: (.*)\n/.exec(text)![1]!);
      const validate = ajv.compile({
        type: 'array',
        items: { $ref: '#/components/schemas/Status' },
        components: openApiDocument.components,
      });
      expect(validate(data), ajv.errorsText(validate.errors)).to.equal(true);
    } else if (mediaType === 'application/json') {
      const validate = ajv.compile({ ...content!.schema, components: openApiDocument.components });
      const payload: unknown = await response.json();
      expect(
        validate(payload),
        `${method} ${path} ${response.status}: ${ajv.errorsText(validate.errors)}`,
      ).to.equal(true);
    }
    for (const header of Object.keys(documented!.headers ?? {})) {
      expect(
        response.headers.get(header),
        `${method} ${path} ${response.status} lacks ${header}`,
      ).to.be.a('string');
    }
    exercised.add(`${method} ${template} ${response.status}`);
    return response;
  }

  it('describes every answer of the running app', async () => {
    await check('POST', '/status/update', JSON.stringify({ user_id: 1, timestamp: 5 }));
    await check('POST', '/status/update', JSON.stringify([{ user_id: 2 }, { user_id: 3 }]));
    await check('POST', '/status/update', JSON.stringify({ user_id: 0 }));
    await check('POST', '/status/update', '{');
    await check(
      'POST',
      '/status/update',
      JSON.stringify([1, 2, 3, 4].map((id) => ({ user_id: id }))),
    );
    await check('POST', '/status/update', JSON.stringify({ user_id: 1, pad: 'x'.repeat(2000) }));
    await check('POST', '/status/update', 'user_id=1', 'application/x-www-form-urlencoded');
    await check('GET', '/status/1');
    await check('GET', '/status/77');
    await sql`INSERT INTO pulse_last_seen (user_id, last_seen) VALUES (88, now() - interval '1 hour')`.execute(
      database.db,
    );
    await check('GET', '/status/88'); // offline, known only from pulse_last_seen
    await check('GET', '/status/x');
    await check(
      'POST',
      '/status/batch',
      JSON.stringify([{ user_id: 1 }, { user_id: 9 }, { user_id: 1 }]),
    );
    await check('POST', '/status/batch', JSON.stringify({ user_id: 1 }));
    await check(
      'POST',
      '/status/batch',
      JSON.stringify([1, 2, 3, 4].map((id) => ({ user_id: id }))),
    );
    await check('POST', '/status/batch', '[]', 'text/plain');
    await check('GET', '/healthz');
    await check('GET', '/readyz');
    await check('GET', '/metrics');
    await check('GET', '/openapi.json');
    await check('GET', '/status/%E0%A4%A');
    await check('POST', '/status/offline', JSON.stringify({ user_id: 2 }));
    await check('POST', '/status/offline?grace_ms=100', JSON.stringify({ user_id: 2 }));
    await check('POST', '/status/offline', JSON.stringify([{ user_id: 3 }]));
    await check('POST', '/status/offline', JSON.stringify({ user_id: -1 }));
    await check(
      'POST',
      '/status/offline',
      JSON.stringify([1, 2, 3, 4].map((id) => ({ user_id: id }))),
    );
    await check('POST', '/status/offline', 'x', 'text/plain');
    await check('GET', '/status/stream?watch=1,2&hold=true&user_id=1');
    await check('GET', '/status/stream?watch=1,x');
    await check('GET', '/status/stream?watch=1,2,3,4');
    await check('GET', '/status/stream?watch=1&hold=true&user_id=1', undefined, undefined, {
      target: limitedApp,
    });
    await check('GET', '/status/stream?watch=1&hold=true&user_id=1', undefined, undefined, {
      target: limitedApp,
    });
  });

  it('describes the answers of AUTH_MODE=jwt', async () => {
    const target = securedApp;
    const user = bearer(await tokens.user(5));
    const body = JSON.stringify({ user_id: 5 });
    await check('POST', '/status/update', body, 'application/json', { target, headers: user });
    await check('POST', '/status/update', JSON.stringify({ user_id: 6 }), 'application/json', {
      target,
      headers: user,
    });
    await check('POST', '/status/update', body, 'application/json', { target });
    await check('GET', '/status/5', undefined, undefined, { target, headers: user });
    await check('GET', '/status/5', undefined, undefined, {
      target,
      headers: { authorization: 'Bearer nope' },
    });
    await check('POST', '/status/batch', '[{"user_id":5}]', 'application/json', { target });
    await check('POST', '/status/batch', '[{"user_id":5}]', 'application/json', {
      target,
      headers: user,
    });
    await check('GET', '/healthz', undefined, undefined, { target });
    const token = await tokens.user(5);
    await check('GET', `/status/stream?watch=5&access_token=${token}`, undefined, undefined, {
      target,
    });
    await check('GET', `/status/stream?access_token=${token}`, undefined, undefined, {
      target,
      headers: user,
    });
    await check('GET', '/status/stream?hold=true&user_id=6', undefined, undefined, {
      target,
      headers: user,
    });
    await check('GET', '/status/stream', undefined, undefined, { target });
    await check('POST', '/status/offline', JSON.stringify({ user_id: 6 }), 'application/json', {
      target,
      headers: user,
    });
    await check('POST', '/status/offline', body, 'application/json', { target });
    await check('PUT', '/status/privacy', '{"invisible":true}', 'application/json', {
      target,
      headers: user,
    });
    await check('PUT', '/status/privacy', '{"user_id":6,"invisible":true}', 'application/json', {
      target,
      headers: user,
    });
    await check('PUT', '/status/privacy', '{}', 'application/json', { target, headers: user });
    await check('GET', '/status/privacy', undefined, undefined, { target, headers: user });
    await check('GET', '/status/privacy', undefined, undefined, { target });
  });

  it('exercised every documented operation', () => {
    for (const [template, operations] of Object.entries(paths)) {
      for (const method of Object.keys(operations)) {
        const seen = [...exercised].some((e) =>
          e.startsWith(`${method.toUpperCase()} ${template} `),
        );
        expect(seen, `${method.toUpperCase()} ${template} never called`).to.equal(true);
      }
    }
  });

  it('holds every status row to user_id, is_online and last_seen (ISO 8601 or null)', async () => {
    const validate = ajv.compile({
      $ref: '#/components/schemas/Status',
      components: openApiDocument.components,
    });
    const rows = (await (
      await app.post('/status/batch', [{ user_id: 1 }, { user_id: 88 }, { user_id: 12345 }])
    ).json()) as Array<{ last_seen: string | null }>;
    for (const row of rows) expect(validate(row), ajv.errorsText(validate.errors)).to.equal(true);
    const [online, remembered, unknown] = rows.map((r) => r.last_seen);
    for (const at of [online, remembered]) expect(new Date(at!).toISOString()).to.equal(at);
    expect(unknown).to.equal(null);
    expect(validate({ user_id: 1, is_online: true })).to.equal(false);
    expect(validate({ user_id: 1, is_online: true, last_seen: 5 })).to.equal(false);
  });

  it('serves the document at GET /openapi.json', async () => {
    const served: unknown = await (await app.get('/openapi.json')).json();
    expect(served).to.deep.equal(JSON.parse(JSON.stringify(openApiDocument)));
    expect((served as { openapi: string }).openapi).to.equal('3.1.0');
  });

  it('documents the 401, 403 and 503 answers with the error schema and their headers', () => {
    for (const operations of Object.values(paths)) {
      for (const operation of Object.values(operations)) {
        for (const status of ['401', '403', '503']) {
          const documented = operation.responses[status];
          if (documented) expect(documented.content?.['application/json']).to.exist;
        }
      }
    }
    expect(paths['/status/update']!.post!.responses['503']!.headers).to.have.property(
      'Retry-After',
    );
    expect(paths['/status/update']!.post!.responses['401']!.headers).to.have.property(
      'WWW-Authenticate',
    );
  });
});

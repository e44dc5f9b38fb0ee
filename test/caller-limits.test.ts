/**
 * Fair limits per caller (issue 24): one token cannot take the stream slots or the read budget of
 * a process. Refusals are 429 with Retry-After and a stable code, and counted in metrics.
 */
import { expect } from 'chai';
import { startTestApp, type TestApp } from './support/app.ts';
import { createTestDatabase, type TestDatabase } from './support/database.ts';
import { waitFor } from './support/entry-points.ts';
import { metricValue } from './support/metrics.ts';
import { SseStream } from './support/sse.ts';
import { bearer, hs256, jwtEnv, randomSecret } from './support/tokens.ts';

describe('fair limits per caller', () => {
  let database: TestDatabase;
  let app: TestApp;
  const secret = randomSecret();
  const minter = hs256(secret);
  const streams: SseStream[] = [];

  before(async () => {
    database = await createTestDatabase();
    app = await startTestApp(
      database,
      jwtEnv(secret, {
        STREAM_MAX_OPEN: '10',
        STREAM_MAX_OPEN_PER_CALLER: '3',
        READ_IDS_PER_SECOND_PER_CALLER: '100',
        BATCH_MAX_IDS: '1000',
      }),
    );
  });
  afterEach(() => {
    for (const stream of streams.splice(0)) stream.close();
  });
  after(async () => {
    await app.close();
    await database.drop();
  });

  const metric = async (series: string) =>
    metricValue(await (await app.get('/metrics')).text(), series);
  const open = async (token: string, watch = '1') => {
    const stream = await SseStream.open(
      `${app.baseUrl}/status/stream?watch=${watch}`,
      bearer(token),
    );
    streams.push(stream);
    return stream;
  };
  /** A stream request expected to be refused: its status, code and Retry-After. */
  const refusal = async (token: string, watch = '1') => {
    const response = await app.get(`/status/stream?watch=${watch}`, bearer(token));
    const body = (await response.json()) as { error: { code: string } };
    return {
      status: response.status,
      code: body.error.code,
      retryAfter: response.headers.get('retry-after'),
    };
  };

  it('one token opening streams in a loop gets its cap; a second token still connects', async () => {
    const greedy = await minter.user(1);
    const statuses: number[] = [];
    for (let i = 0; i < 3; i += 1) statuses.push((await open(greedy)).response.status);
    expect(statuses).to.deep.equal([200, 200, 200]);
    const refusals = [];
    for (let i = 0; i < 5; i += 1) refusals.push(await refusal(greedy));
    expect(refusals).to.deep.equal(
      Array(5).fill({ status: 429, code: 'too_many_streams_per_caller', retryAfter: '5' }),
    );
    expect(await metric('pulse_caller_limit_refusals_total{limit="streams"}')).to.equal(5);
    expect(await metric('pulse_stream_callers')).to.equal(1);

    const other = await open(await minter.user(2));
    expect(other.response.status).to.equal(200);
    await other.next();
    expect(await metric('pulse_stream_callers')).to.equal(2);

    // One of the greedy token's streams ends: its slot is the token's again.
    streams[0]!.close();
    await waitFor('a freed slot', async () => (await open(greedy)).response.status === 200);
  });

  it('caps the ids one token reads per second, batch and snapshots alike', async () => {
    const reader = await minter.user(3);
    const batch = Array.from({ length: 1000 }, (_, i) => ({ user_id: i + 1 }));
    expect((await app.post('/status/batch', batch, bearer(reader))).status).to.equal(200);
    const refused = await app.post('/status/batch', batch, bearer(reader));
    expect(refused.status).to.equal(429);
    expect(((await refused.json()) as { error: { code: string } }).error.code).to.equal(
      'too_many_reads_per_caller',
    );
    // 1,000 ids at 100 a second: about ten seconds until the budget has them again.
    expect(Number(refused.headers.get('retry-after'))).to.be.within(9, 10);
    // A stream's snapshot spends the same budget.
    const watch = Array.from({ length: 500 }, (_, i) => i + 1).join(',');
    expect(await refusal(reader, watch)).to.deep.include({
      status: 429,
      code: 'too_many_reads_per_caller',
    });
    expect(await metric('pulse_caller_limit_refusals_total{limit="reads"}')).to.equal(2);
    // Another caller's budget is its own.
    expect((await app.post('/status/batch', batch, bearer(await minter.user(4)))).status).to.equal(
      200,
    );
  });

  it('counts a single GET /status/{id} as one id of the same budget', async () => {
    // A budget of 2 ids (the bucket holds BATCH_MAX_IDS) refilling at 1 a second: of five
    // concurrent single reads, at most two (three if a second passed) can be answered.
    const tight = await startTestApp(
      database,
      jwtEnv(secret, { READ_IDS_PER_SECOND_PER_CALLER: '1', BATCH_MAX_IDS: '2' }),
    );
    try {
      const reader = bearer(await minter.user(5));
      const answers = await Promise.all(
        Array.from({ length: 5 }, () => tight.get('/status/7', reader)),
      );
      const refused = answers.filter((answer) => answer.status === 429);
      expect(refused.length, 'refused single reads').to.be.within(2, 3);
      expect(answers.filter((answer) => answer.status === 200)).to.have.length(5 - refused.length);
      const body = (await refused[0]!.json()) as { error: { code: string } };
      expect(body.error.code).to.equal('too_many_reads_per_caller');
      expect(refused[0]!.headers.get('retry-after')).to.equal('1');
      // Another caller's budget is its own.
      expect((await tight.get('/status/7', bearer(await minter.user(6)))).status).to.equal(200);
    } finally {
      await tight.close();
    }
  });

  it('does not apply with AUTH_MODE=none (no caller to tell apart)', async () => {
    const open = await startTestApp(database, { STREAM_MAX_OPEN_PER_CALLER: '1' });
    const local: SseStream[] = [];
    try {
      for (let i = 0; i < 3; i += 1) {
        local.push(await SseStream.open(`${open.baseUrl}/status/stream?watch=1`));
      }
      expect(local.map((s) => s.response.status)).to.deep.equal([200, 200, 200]);
    } finally {
      for (const stream of local) stream.close();
      await open.close();
    }
  });
});

import { spawn } from 'node:child_process';
import { expect } from 'chai';
import { sql } from 'kysely';
import { findOnlineUserIds, updatePresenceSettings } from '../lib/store/pulse-store.ts';
import { Sweeper } from '../sweeper/sweeper.ts';
import { startTestApp } from './support/app.ts';
import { createTestDatabase, silentLogger, type TestDatabase } from './support/database.ts';

interface Exit {
  code: number | null;
  stderr: string;
}

/** Runs an entry point until it exits by itself (a refused start), or kills it after `ms`. */
function run(entry: string, env: Record<string, string>, ms = 20_000): Promise<Exit> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', entry], {
      env: { PATH: process.env.PATH, LOG_LEVEL: 'silent', PORT: '0', METRICS_PORT: '0', ...env },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), ms);
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stderr });
    });
  });
}

/** Rows 1..n, user i last seen i seconds ago. */
async function putAges(database: TestDatabase, n: number) {
  await sql`INSERT INTO pulse (user_id, last_hb)
    SELECT i, now() - make_interval(secs => i) FROM generate_series(1, ${n}::bigint) i
    ON CONFLICT (user_id) DO UPDATE SET last_hb = EXCLUDED.last_hb`.execute(database.db);
}

describe('one online rule for every process and for SQL', function () {
  this.timeout(60_000);
  let database: TestDatabase;
  beforeEach(async () => {
    database = await createTestDatabase();
  });
  afterEach(async () => {
    await database.drop();
  });

  it('an API or a sweeper whose settings contradict the database refuses to start, naming both values', async () => {
    await updatePresenceSettings(database.db, { onlineThresholdSeconds: 60 });
    const [api, sweeper] = await Promise.all([
      run('api/main.ts', { DATABASE_URL: database.url, ONLINE_THRESHOLD_SECONDS: '20' }),
      // The deployment: the threshold raised to 60, the sweeper left at its 30 s default.
      run('sweeper/main.ts', { DATABASE_URL: database.url }),
    ]);
    expect(api.code, api.stderr).to.equal(1);
    expect(api.stderr).to.match(
      /ONLINE_THRESHOLD_SECONDS is 20 here but 60 in the database \(pulse_settings\.online_threshold_seconds\)/,
    );
    expect(sweeper.code, sweeper.stderr).to.equal(1);
    expect(sweeper.stderr).to.match(
      /SWEEP_OLDER_THAN_SECONDS is 30, below the online threshold 60 in the database/,
    );
  });

  it('processes that agree with the database start', async () => {
    await updatePresenceSettings(database.db, { onlineThresholdSeconds: 25 });
    // Killed after 8 s: still running then means the start was not refused.
    const [api, sweeper] = await Promise.all([
      run('api/main.ts', { DATABASE_URL: database.url, ONLINE_THRESHOLD_SECONDS: '25' }, 8_000),
      run('sweeper/main.ts', { DATABASE_URL: database.url }, 8_000),
    ]);
    expect(api, api.stderr).to.deep.equal({ code: null, stderr: '' });
    expect(sweeper, sweeper.stderr).to.deep.equal({ code: null, stderr: '' });
  });

  it('however the API and the sweeper are set, the sweep never deletes a row the API counts online', async () => {
    // An API with no threshold of its own and a sweeper told to sweep after 5 s, while the rule
    // in force (the database's) is 20 s, then raised to 40 s while both run.
    const app = await startTestApp(database);
    const sweeper = new Sweeper(database.db, silentLogger, {
      schedule: '* * * * *',
      olderThanSeconds: 5,
      batchSize: 13,
      leaseTtlSeconds: 30,
    });
    try {
      const onlineByApi = async () => {
        const response = await app.post(
          '/status/batch',
          Array.from({ length: 60 }, (_, i) => ({ user_id: i + 1 })),
        );
        const rows = (await response.json()) as Array<{ user_id: number; is_online: boolean }>;
        return rows.filter((r) => r.is_online).map((r) => r.user_id);
      };
      for (const threshold of [20, 40]) {
        await putAges(database, 60);
        await updatePresenceSettings(database.db, { onlineThresholdSeconds: threshold });
        const online = await onlineByApi();
        expect(online.length).to.be.within(threshold - 2, threshold);
        expect((await sweeper.sweepOnce()).outcome).to.equal('done');
        const left = await database.userIds();
        expect(left).to.include.members(online);
        // Everything older than the rule is gone: the guard did not stop the sweep itself.
        expect(left.every((id) => id <= threshold + 2)).to.equal(true, `left: ${left.join()}`);
      }
    } finally {
      await sweeper.stop();
      await app.close();
    }
  });

  it('the pulse_online view answers as Pulse does, reading the rule once per query', async () => {
    await putAges(database, 50);
    await updatePresenceSettings(database.db, { onlineThresholdSeconds: 30 });
    const ids = Array.from({ length: 50 }, (_, i) => i + 1);
    const [fromPulse, { rows }] = await Promise.all([
      findOnlineUserIds(database.db, ids),
      sql<{ user_id: string }>`SELECT user_id FROM pulse_online ORDER BY user_id`.execute(
        database.db,
      ),
    ]);
    expect(rows.map((r) => Number(r.user_id))).to.deep.equal([...fromPulse].sort((a, b) => a - b));
    expect(rows.length).to.be.within(28, 30);
    const plan = await sql<{ 'QUERY PLAN': string }>`
      EXPLAIN (COSTS OFF) SELECT count(*) FROM pulse_online`.execute(database.db);
    const text = plan.rows.map((r) => r['QUERY PLAN']).join('\n');
    expect(text).not.to.match(/SubPlan|Nested Loop/); // nothing evaluated per row but a comparison
    expect(text).to.match(/InitPlan/); // the threshold, read once
    expect(text.match(/Scan on pulse\b/g) ?? []).to.have.length(1);
  });
});

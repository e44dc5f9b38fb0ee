import { expect } from 'chai';
import { serverUrl } from './support/database.ts';
import { runEntryPoint, startApi, startSweeper, waitFor } from './support/entry-points.ts';
import { adminQuery, queryOnce, uniqueName, withDatabase } from './support/server.ts';

/** What an offline user's devices read. */
const NO_DEVICES = { count: 0, kinds: [] };

describe('migrate, api and sweeper as three processes', function () {
  this.timeout(90_000);
  let name: string;
  let url: string;

  before(async () => {
    name = uniqueName('pulse_e2e');
    await adminQuery(serverUrl(), `CREATE DATABASE ${name}`);
    url = withDatabase(serverUrl(), name);
  });
  after(async () => {
    await adminQuery(serverUrl(), `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  });

  it('a user goes offline after the threshold and loses the row after the sweep', async () => {
    const env = {
      DATABASE_URL: url,
      LOG_LEVEL: 'silent',
      ONLINE_THRESHOLD_SECONDS: '2',
      SWEEP_OLDER_THAN_SECONDS: '6',
      SWEEP_SCHEDULE: '* * * * * *',
    };
    const migrated = await runEntryPoint('migrate', { env });
    expect(migrated.code, migrated.stderr).to.equal(0);

    const [{ api, baseUrl }, { sweeper }] = await Promise.all([startApi(env), startSweeper(env)]);
    await api.waitForHttp(`${baseUrl}/readyz`);

    const status = async () =>
      (await (await fetch(`${baseUrl}/status/42`)).json()) as {
        user_id: number;
        is_online: boolean;
        last_seen: string | null;
      };
    /** The row's age by the database clock, or null once it is gone. */
    const age = async () =>
      (
        await queryOnce<{ age: number }>(
          url,
          'SELECT extract(epoch FROM now() - last_hb)::float8 AS age FROM pulse WHERE user_id = 42',
        )
      ).rows[0]?.age ?? null;
    const sent = await fetch(`${baseUrl}/status/update`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ user_id: 42 }),
    });
    expect(sent.status).to.equal(200);
    const online = await status();
    expect(online).to.deep.include({ user_id: 42, is_online: true });
    expect(Date.now() - Date.parse(String(online.last_seen))).to.be.within(-5_000, 5_000);

    // Past the online threshold by the database clock, still short of the sweep age.
    const ageWhenOffline = await waitFor('the row to pass the online threshold', async () => {
      const seconds = await age();
      return seconds !== null && seconds > 2.2 ? seconds : undefined;
    });
    expect(await status()).to.deep.equal({ ...online, is_online: false, devices: NO_DEVICES });
    expect(ageWhenOffline, 'the sweeper should not have deleted it yet').to.be.below(6);

    await waitFor('the sweeper to delete the row', async () => (await age()) === null, {
      timeoutMs: 20_000,
      whileRunning: sweeper,
    });
    // Swept, and remembered: last seen is still the last heartbeat.
    expect(await status()).to.deep.equal({ ...online, is_online: false, devices: NO_DEVICES });

    expect(await Promise.all([api.stop(), sweeper.stop()])).to.deep.equal([
      { code: 0, signal: null },
      { code: 0, signal: null },
    ]);
  });
});

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { expect } from 'chai';
import pg from 'pg';
import { freePort } from '../dev/embedded-postgres.ts';
import { serverUrl } from './support/database.ts';
import { adminQuery, uniqueName, withDatabase } from './support/server.ts';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe('migrate, api and sweeper as three processes', function () {
  this.timeout(60_000);
  const children: ChildProcess[] = [];
  let name: string;
  let url: string;

  before(async () => {
    name = uniqueName('pulse_e2e');
    await adminQuery(serverUrl(), `CREATE DATABASE ${name}`);
    url = withDatabase(serverUrl(), name);
  });
  after(async () => {
    for (const child of children) if (child.exitCode === null) child.kill('SIGKILL');
    await adminQuery(serverUrl(), `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  });

  it('a user goes offline after the threshold and loses the row after the sweep', async () => {
    const env = {
      PATH: process.env.PATH,
      DATABASE_URL: url,
      LOG_LEVEL: 'silent',
      ONLINE_THRESHOLD_SECONDS: '2',
      SWEEP_OLDER_THAN_SECONDS: '6',
      SWEEP_SCHEDULE: '* * * * * *',
      METRICS_PORT: '0',
    };
    const migrated = spawnSync(process.execPath, ['--import', 'tsx', 'scripts/migrate.ts'], {
      env,
      encoding: 'utf8',
    });
    expect(migrated.status, migrated.stderr).to.equal(0);

    const port = await freePort();
    for (const entry of ['api/main.ts', 'sweeper/main.ts']) {
      children.push(
        spawn(process.execPath, ['--import', 'tsx', entry], {
          env: { ...env, PORT: String(port) },
          stdio: 'ignore',
        }),
      );
    }
    const base = `http://127.0.0.1:${port}`;
    for (let i = 0; !(await fetch(`${base}/readyz`).catch(() => undefined))?.ok; i += 1) {
      if (i > 200) throw new Error('the API did not become ready');
      await sleep(50);
    }

    const status = async (): Promise<unknown> => (await fetch(`${base}/status/42`)).json();
    const rows = async () => {
      const client = new pg.Client({ connectionString: url });
      await client.connect();
      const { rowCount } = await client.query('SELECT 1 FROM pulse WHERE user_id = 42');
      await client.end();
      return rowCount;
    };
    const sent = await fetch(`${base}/status/update`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ user_id: 42 }),
    });
    expect(sent.status).to.equal(200);
    expect(await status()).to.deep.equal({ user_id: 42, is_online: true });

    await sleep(2500); // past the online threshold, well before the sweep age
    expect(await status()).to.deep.equal({ user_id: 42, is_online: false });
    expect(await rows()).to.equal(1);

    for (let i = 0; (await rows()) !== 0; i += 1) {
      if (i > 200) throw new Error('the sweeper did not delete the row');
      await sleep(100);
    }
    expect(await status()).to.deep.equal({ user_id: 42, is_online: false });

    for (const child of children) child.kill('SIGTERM');
    const codes = await Promise.all(
      children.map(async (child) => ((await once(child, 'exit')) as [number | null])[0]),
    );
    expect(codes).to.deep.equal([0, 0]);
  });
});

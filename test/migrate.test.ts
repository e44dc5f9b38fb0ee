import { expect } from 'chai';
import { serverUrl } from './support/database.ts';
import { runEntryPoint, type FinishedRun } from './support/entry-points.ts';
import { MIGRATION_NAMES, migrationsNewerThan } from './support/migrations.ts';
import { adminQuery, freePort, queryOnce, uniqueName, withDatabase } from './support/server.ts';

function migrate(
  databaseUrl: string,
  args: string[] = [],
  env: Record<string, string> = {},
): Promise<FinishedRun> {
  return runEntryPoint('migrate', {
    env: { DATABASE_URL: databaseUrl, LOG_LEVEL: 'silent', ...env },
    args,
  });
}

describe('migrate CLI', function () {
  this.timeout(90_000); // every test runs the CLI as a process, several times
  let name: string;
  let url: string;
  beforeEach(async () => {
    name = uniqueName('pulse_migrate');
    await adminQuery(serverUrl(), `CREATE DATABASE ${name}`);
    url = withDatabase(serverUrl(), name);
  });
  afterEach(async () => {
    await adminQuery(serverUrl(), `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  });

  it('applies, reports, and reverts the schema', async function () {
    this.timeout(120_000); // ten CLI runs, each a fresh tsx process
    expect((await migrate(url, ['status'])).stdout).to.match(/0001_create_pulse\s+pending/);
    const up = await migrate(url);
    expect(up.code).to.equal(0);
    expect(up.stdout).to.match(
      /applied 0001_create_pulse, 0002_sweeper_lease, 0003_presence_settings, 0004_last_seen/,
    );
    expect((await migrate(url, ['status'])).stdout).to.match(/0001_create_pulse\s+applied \d{4}-/);
    const columns = await queryOnce(
      url,
      `SELECT column_name, data_type, is_nullable FROM information_schema.columns
       WHERE table_name = 'pulse' ORDER BY ordinal_position`,
    );
    expect(columns.rows).to.deep.equal([
      { column_name: 'user_id', data_type: 'bigint', is_nullable: 'NO' },
      { column_name: 'last_hb', data_type: 'timestamp with time zone', is_nullable: 'NO' },
      { column_name: 'online_since', data_type: 'timestamp with time zone', is_nullable: 'YES' },
      { column_name: 'device_key', data_type: 'integer', is_nullable: 'YES' },
      { column_name: 'device_kind', data_type: 'USER-DEFINED', is_nullable: 'YES' },
      { column_name: 'devices', data_type: 'ARRAY', is_nullable: 'YES' },
    ]);
    expect((await migrate(url)).stdout).to.match(/already up to date/);

    // Each down undoes one migration, newest first, until nothing is left.
    for (const newer of migrationsNewerThan('0012_devices')) {
      expect((await migrate(url, ['down'])).stdout).to.include(`reverted ${newer}`);
    }
    expect((await migrate(url, ['down'])).stdout).to.match(/reverted 0012_devices/);
    expect(
      (
        await queryOnce(
          url,
          `SELECT to_regclass('pulse_devices') AS t,
                  (SELECT count(*)::int FROM information_schema.columns
                   WHERE table_name = 'pulse' AND column_name LIKE 'device%') AS c`,
        )
      ).rows[0],
    ).to.deep.equal({ t: null, c: 0 });
    expect((await migrate(url, ['down'])).stdout).to.match(/reverted 0011_held_reason/);
    // 0010 changes nothing on plain PostgreSQL (Citus only), and is undone all the same.
    expect((await migrate(url, ['down'])).stdout).to.match(
      /reverted 0010_shared_tables_on_every_node/,
    );
    expect((await migrate(url, ['down'])).stdout).to.match(/reverted 0009_webhooks/);
    expect(
      (
        await queryOnce(
          url,
          `SELECT to_regclass('pulse_webhooks') AS w, to_regclass('pulse_webhook_batches') AS b,
                  to_regclass('pulse_webhook_parked') AS p`,
        )
      ).rows[0],
    ).to.deep.equal({ w: null, b: null, p: null });
    expect((await migrate(url, ['down'])).stdout).to.match(/reverted 0008_visibility_changes/);
    expect(
      (await queryOnce(url, `SELECT to_regclass('pulse_visibility_changes') AS t`)).rows[0],
    ).to.deep.equal({ t: null });
    expect((await migrate(url, ['down'])).stdout).to.match(/reverted 0007_privacy_and_visibility/);
    expect(
      (await queryOnce(url, `SELECT to_regclass('pulse_privacy') AS t`)).rows[0],
    ).to.deep.equal({ t: null });
    expect((await migrate(url, ['down'])).stdout).to.match(/reverted 0006_presence_events/);
    expect(
      (
        await queryOnce(
          url,
          `SELECT to_regclass('pulse_events') AS e, to_regclass('pulse_job_leases') AS l,
                  (SELECT count(*)::int FROM information_schema.columns
                   WHERE table_name = 'pulse' AND column_name = 'online_since') AS c`,
        )
      ).rows[0],
    ).to.deep.equal({ e: null, l: null, c: 0 });

    expect((await migrate(url, ['down'])).stdout).to.match(/reverted 0005_distribute_by_user_id/);
    expect((await migrate(url, ['down'])).stdout).to.match(/reverted 0004_last_seen/);
    expect(
      (await queryOnce(url, `SELECT to_regclass('pulse_last_seen') AS t`)).rows[0],
    ).to.deep.equal({
      t: null,
    });
    expect((await migrate(url, ['down'])).stdout).to.match(/reverted 0003_presence_settings/);
    expect(
      (
        await queryOnce(
          url,
          `SELECT to_regclass('pulse_settings') AS s, to_regclass('pulse_online') AS v, obj_description('pulse'::regclass) AS c`,
        )
      ).rows[0],
    ).to.deep.equal({ s: null, v: null, c: null });
    expect((await migrate(url, ['down'])).stdout).to.match(/reverted 0002_sweeper_lease/);
    expect(
      (await queryOnce(url, `SELECT to_regclass('pulse_sweeper_lease') AS t`)).rows[0],
    ).to.deep.equal({ t: null });
    expect((await queryOnce(url, `SELECT to_regclass('pulse') AS t`)).rows[0]).to.deep.equal({
      t: 'pulse',
    });
    const down = await migrate(url, ['down']);
    expect(down.code).to.equal(0);
    expect(down.stdout).to.match(/reverted 0001_create_pulse/);
    expect((await queryOnce(url, `SELECT to_regclass('pulse') AS t`)).rows[0]).to.deep.equal({
      t: null,
    });
    expect((await migrate(url, ['down'])).stdout).to.match(/nothing to revert/);
  });

  it('0015 leaves the rows of users on several devices as they are, reading as one device, and down keeps them on one', async () => {
    expect((await migrate(url)).code).to.equal(0);
    expect((await migrate(url, ['down'])).stdout).to.include('reverted 0015_devices_in_pulse_row');
    // As 0012 kept them: user 1 on two devices (device_key NULL, a pulse_devices row each),
    // user 2 on one.
    await queryOnce(
      url,
      `INSERT INTO pulse (user_id, last_hb, device_key, device_kind)
         VALUES (1, now(), NULL, 'web'), (2, now(), 5, 'mobile');
       INSERT INTO pulse_devices (user_id, device_key, last_hb, device_kind, device_id)
         VALUES (1, 7, now() - interval '3 seconds', 'mobile', 'phone'),
                (1, 9, now(), 'web', 'browser')`,
    );
    expect((await migrate(url)).stdout).to.include('applied 0015_devices_in_pulse_row');
    const devices = `SELECT user_id::int, device_key, device_kind::text AS kind
                     FROM pulse_devices ORDER BY user_id`;
    // User 1 until their next beat: one device, of unknown key, the kind of their newest beat.
    expect((await queryOnce(url, devices)).rows).to.deep.equal([
      { user_id: 1, device_key: null, kind: 'web' },
      { user_id: 2, device_key: 5, kind: 'mobile' },
    ]);
    // Down: a table again (empty); users on several devices stay on their newest beat's device.
    await queryOnce(
      url,
      `UPDATE pulse SET device_key = 9, devices = ARRAY[ROW(9, 'web', now()), ROW(7, 'mobile', now())]::pulse_device[]
       WHERE user_id = 1`,
    );
    expect((await migrate(url, ['down'])).stdout).to.include('reverted 0015_devices_in_pulse_row');
    expect((await queryOnce(url, devices)).rows).to.deep.equal([]);
    expect(
      (await queryOnce(url, `SELECT user_id::int, device_key FROM pulse ORDER BY user_id`)).rows,
    ).to.deep.equal([
      { user_id: 1, device_key: 9 },
      { user_id: 2, device_key: 5 },
    ]);
  });

  it('is safe when several copies run at once', async () => {
    const runs = await Promise.all([migrate(url), migrate(url), migrate(url)]);
    for (const run of runs) expect(run.code, run.stderr).to.equal(0);
    expect(runs.filter((r) => /applied 0001_create_pulse/.test(r.stdout))).to.have.length(1);
    const applied = await queryOnce(url, 'SELECT name FROM kysely_migration ORDER BY name');
    expect(applied.rows).to.deep.equal(MIGRATION_NAMES.map((name) => ({ name })));
  });

  it('switches the table to UNLOGGED and back with PULSE_TABLE_UNLOGGED', async () => {
    const persistence = async () =>
      (await queryOnce(url, `SELECT relpersistence FROM pg_class WHERE oid = 'pulse'::regclass`))
        .rows[0] as {
        relpersistence: string;
      };
    expect((await migrate(url, [], { PULSE_TABLE_UNLOGGED: 'true' })).stdout).to.match(
      /now UNLOGGED/,
    );
    expect(await persistence()).to.deep.equal({ relpersistence: 'u' });
    // Unset leaves it alone: a deploy that does not mention it never rewrites the table.
    expect((await migrate(url)).stdout).not.to.match(/now (UN)?LOGGED/);
    expect(await persistence()).to.deep.equal({ relpersistence: 'u' });
    expect((await migrate(url, [], { PULSE_TABLE_UNLOGGED: 'false' })).stdout).to.match(
      /now LOGGED/,
    );
    expect(await persistence()).to.deep.equal({ relpersistence: 'p' });
  });

  it('exits 1 with a readable message when the database cannot be reached', async () => {
    const run = await migrate(`postgres://postgres@127.0.0.1:${await freePort()}/nowhere`);
    expect(run.code).to.equal(1);
    expect(run.stderr).to.match(/^error: .*(ECONNREFUSED|connect)/m);
    expect(run.stderr).not.to.match(/^\s+at /m);
  });

  it('exits 1 on an unknown command', async () => {
    const run = await migrate(url, ['sideways']);
    expect(run.code).to.equal(1);
    expect(run.stderr).to.match(/unknown migrate command "sideways"/);
  });
});

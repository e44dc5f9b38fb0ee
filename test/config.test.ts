import { expect } from 'chai';
import {
  ConfigError,
  loadApiConfig,
  loadMigrateConfig,
  loadStartConfig,
  loadSweeperConfig,
} from '../lib/infra/config.ts';
import { runEntryPoint, type EntryPointName } from './support/entry-points.ts';

const DATABASE_URL = 'postgres://u:p@127.0.0.1:5432/pulse';

function problemsOf(load: () => unknown): string[] {
  try {
    load();
  } catch (error) {
    expect(error).to.be.instanceOf(ConfigError);
    return (error as ConfigError).problems;
  }
  expect.fail('expected a ConfigError');
}

describe('configuration', () => {
  it('applies the documented defaults', () => {
    const api = loadApiConfig({ DATABASE_URL });
    expect(api).to.include({
      HOST: '127.0.0.1',
      PORT: 3000,
      BATCH_MAX_IDS: 1000,
      PG_POOL_MAX: 10,
      BODY_LIMIT_BYTES: 65536,
      LOG_LEVEL: 'info',
      MAX_IN_FLIGHT_REQUESTS: 128,
      MAX_QUEUE_WAIT_MS: 500,
      HTTP_REQUEST_TIMEOUT_MS: 10_000,
      HTTP_HEADERS_TIMEOUT_MS: 5_000,
      HTTP_KEEP_ALIVE_TIMEOUT_MS: 5_000,
      HTTP_SOCKET_IDLE_TIMEOUT_MS: 30_000,
      HTTP_MAX_CONNECTIONS: 11_000,
      REQUEST_BODY_TIMEOUT_MS: 2_000,
      REQUEST_DEADLINE_MS: 5_000,
      STREAM_MAX_BUFFERED_BYTES_TOTAL: 64 * 1024 * 1024,
    });
    const sweeper = loadSweeperConfig({ DATABASE_URL });
    expect(sweeper).to.include({ SWEEP_OLDER_THAN_SECONDS: 30, SWEEP_SCHEDULE: '*/10 * * * * *' });
    // Unset: the threshold in force is the database's (pulse_settings), not an assumed 20.
    expect(api.ONLINE_THRESHOLD_SECONDS).to.equal(undefined);
    expect(sweeper).to.include({ SWEEP_BATCH_PAUSE_MS: 0, SWEEP_LEASE_TTL_SECONDS: 30 });
    expect(Object.isFrozen(api)).to.equal(true);
  });

  it('names the sweep lease TTL SWEEP_LEASE_TTL_SECONDS and still reads SWEEP_LOCK_TTL_SECONDS', () => {
    expect(loadSweeperConfig({ DATABASE_URL }).SWEEP_LEASE_TTL_SECONDS).to.equal(30);
    expect(
      loadSweeperConfig({ DATABASE_URL, SWEEP_LEASE_TTL_SECONDS: '45' }).SWEEP_LEASE_TTL_SECONDS,
    ).to.equal(45);
    expect(
      loadSweeperConfig({ DATABASE_URL, SWEEP_LOCK_TTL_SECONDS: '40' }).SWEEP_LEASE_TTL_SECONDS,
    ).to.equal(40);
    expect(
      problemsOf(() =>
        loadSweeperConfig({
          DATABASE_URL,
          SWEEP_LOCK_TTL_SECONDS: '40',
          SWEEP_LEASE_TTL_SECONDS: '45',
        }),
      )[0],
    ).to.match(/SWEEP_LOCK_TTL_SECONDS is the old name of SWEEP_LEASE_TTL_SECONDS/);
    expect(
      problemsOf(() => loadSweeperConfig({ DATABASE_URL, SWEEP_LOCK_TTL_SECONDS: '0' }))[0],
    ).to.match(/SWEEP_LEASE_TTL_SECONDS must be at least 1/);
  });

  it('treats an empty variable as unset', () => {
    expect(loadApiConfig({ DATABASE_URL, PORT: '' }).PORT).to.equal(3000);
  });

  const wrong: [string, Record<string, string>, RegExp][] = [
    ['DATABASE_URL', { DATABASE_URL: 'mysql://x' }, /DATABASE_URL must be a postgres/],
    ['PORT', { PORT: 'abc' }, /PORT must be a whole number \(got "abc"\)/],
    ['PORT', { PORT: '70000' }, /PORT must be at most 65535/],
    [
      'ONLINE_THRESHOLD_SECONDS',
      { ONLINE_THRESHOLD_SECONDS: '0' },
      /ONLINE_THRESHOLD_SECONDS must be at least 1/,
    ],
    ['BATCH_MAX_IDS', { BATCH_MAX_IDS: '1.5' }, /BATCH_MAX_IDS must be a whole number/],
    ['PG_POOL_MAX', { PG_POOL_MAX: '-1' }, /PG_POOL_MAX must be at least 1/],
    ['LOG_LEVEL', { LOG_LEVEL: 'loud' }, /LOG_LEVEL/],
    ['HEARTBEAT_GROUP_COMMIT', { HEARTBEAT_GROUP_COMMIT: 'maybe' }, /HEARTBEAT_GROUP_COMMIT/],
    [
      'MAX_IN_FLIGHT_REQUESTS',
      { MAX_IN_FLIGHT_REQUESTS: '0' },
      /MAX_IN_FLIGHT_REQUESTS must be at least 1/,
    ],
    [
      'HTTP_MAX_CONNECTIONS',
      { HTTP_MAX_CONNECTIONS: 'many' },
      /HTTP_MAX_CONNECTIONS must be a whole number/,
    ],
    [
      'HTTP_MAX_CONNECTIONS',
      { STREAM_MAX_OPEN: '500', HTTP_MAX_CONNECTIONS: '500' },
      /HTTP_MAX_CONNECTIONS must be above STREAM_MAX_OPEN \(500\)/,
    ],
    [
      'REQUEST_BODY_TIMEOUT_MS',
      { REQUEST_BODY_TIMEOUT_MS: '50' },
      /REQUEST_BODY_TIMEOUT_MS must be at least 100/,
    ],
    ['REQUEST_DEADLINE_MS', { REQUEST_DEADLINE_MS: 'soon' }, /REQUEST_DEADLINE_MS must be a whole/],
    [
      'STREAM_MAX_BUFFERED_BYTES_TOTAL',
      { STREAM_MAX_BUFFERED_BYTES: '1048576', STREAM_MAX_BUFFERED_BYTES_TOTAL: '524288' },
      /STREAM_MAX_BUFFERED_BYTES_TOTAL must not be below STREAM_MAX_BUFFERED_BYTES/,
    ],
    [
      'HTTP_HEADERS_TIMEOUT_MS',
      { HTTP_REQUEST_TIMEOUT_MS: '1000', HTTP_HEADERS_TIMEOUT_MS: '2000' },
      /HTTP_HEADERS_TIMEOUT_MS must not be above HTTP_REQUEST_TIMEOUT_MS/,
    ],
  ];
  for (const [name, env, message] of wrong) {
    it(`names ${name} and the reason when it is wrong (${JSON.stringify(env)})`, () => {
      const problems = problemsOf(() => loadApiConfig({ DATABASE_URL, ...env }));
      expect(problems.join('\n')).to.match(message);
    });
  }

  it('never echoes the password of a wrong DATABASE_URL', () => {
    const problems = problemsOf(() =>
      loadApiConfig({ DATABASE_URL: 'mysql://me:s3cret@db/pulse' }),
    );
    expect(problems.join('\n')).to.include('mysql://me:***@db/pulse').and.not.include('s3cret');
  });

  const secretUrls: [string, string][] = [
    ['a port out of range', 'postgres://pulse:s3cr3t-pw@127.0.0.1:99999/pulse'],
    ['an unencoded "/" in the password', 'postgres://pulse:s3cr3t-pw/x@127.0.0.1:5432/pulse'],
    ['a password parameter', 'mysql://127.0.0.1/pulse?sslmode=disable&password=s3cr3t-pw'],
  ];
  for (const [what, url] of secretUrls) {
    it(`never echoes the password of a DATABASE_URL that does not parse (${what})`, () => {
      const shown = problemsOf(() => loadApiConfig({ DATABASE_URL: url })).join('\n');
      expect(shown)
        .to.match(/DATABASE_URL must be a postgres/)
        .and.not.include('s3cr3t-pw');
      expect(shown).to.match(/pulse:\*\*\*@|password=\*\*\*/);
    });
  }

  it('requires DATABASE_URL', () => {
    expect(problemsOf(() => loadApiConfig({})).join('\n')).to.match(/DATABASE_URL is required/);
  });

  it('lists every wrong variable at once', () => {
    const problems = problemsOf(() =>
      loadApiConfig({ DATABASE_URL, PORT: 'x', BATCH_MAX_IDS: '0' }),
    );
    expect(problems).to.have.length(2);
  });

  it('refuses a sweep age below the online threshold', () => {
    const problems = problemsOf(() =>
      loadSweeperConfig({
        DATABASE_URL,
        ONLINE_THRESHOLD_SECONDS: '60',
        SWEEP_OLDER_THAN_SECONDS: '30',
      }),
    );
    expect(problems.join('\n')).to.match(
      /SWEEP_OLDER_THAN_SECONDS must not be below ONLINE_THRESHOLD_SECONDS/,
    );
  });

  it('refuses a batch pause of half the sweep lease or more, naming both values', () => {
    const problems = problemsOf(() =>
      loadSweeperConfig({
        DATABASE_URL,
        SWEEP_LOCK_TTL_SECONDS: '10',
        SWEEP_BATCH_PAUSE_MS: '5000',
      }),
    );
    expect(problems.join('\n')).to.match(
      /SWEEP_BATCH_PAUSE_MS must be less than half of SWEEP_LEASE_TTL_SECONDS \(10 s\).*\(got "5000"\)/,
    );
    expect(
      loadSweeperConfig({
        DATABASE_URL,
        SWEEP_LOCK_TTL_SECONDS: '10',
        SWEEP_BATCH_PAUSE_MS: '4999',
      }),
    ).to.include({ SWEEP_BATCH_PAUSE_MS: 4999 });
  });

  it('reads the shared presence settings for npm run migrate, unset unless given', () => {
    expect(loadMigrateConfig({ DATABASE_URL })).to.not.have.any.keys(
      'ONLINE_THRESHOLD_SECONDS',
      'LAST_SEEN_ENABLED',
      'LAST_SEEN_RETENTION_DAYS',
    );
    expect(
      loadMigrateConfig({
        DATABASE_URL,
        ONLINE_THRESHOLD_SECONDS: '45',
        LAST_SEEN_ENABLED: 'off',
        LAST_SEEN_RETENTION_DAYS: '7',
      }),
    ).to.include({
      ONLINE_THRESHOLD_SECONDS: 45,
      LAST_SEEN_ENABLED: false,
      LAST_SEEN_RETENTION_DAYS: 7,
    });
    expect(
      problemsOf(() => loadMigrateConfig({ DATABASE_URL, LAST_SEEN_RETENTION_DAYS: '0' })).join(),
    ).to.match(/LAST_SEEN_RETENTION_DAYS must be at least 1/);
  });

  it("validates npm start's own variables, with DATABASE_URL optional there", () => {
    expect(loadStartConfig({})).to.include({
      EMBEDDED_PG_PORT: 54329,
      EMBEDDED_PG_DATA_DIR: '.pulse-data/postgres',
    });
    expect(problemsOf(() => loadStartConfig({ EMBEDDED_PG_PORT: 'abc' })).join('\n')).to.match(
      /EMBEDDED_PG_PORT must be a whole number \(got "abc"\)/,
    );
    expect(problemsOf(() => loadStartConfig({ DATABASE_URL: 'x' })).join('\n')).to.match(
      /DATABASE_URL must be a postgres/,
    );
  });

  it('leaves PULSE_TABLE_UNLOGGED unset unless given, and refuses a non-boolean', () => {
    expect(loadMigrateConfig({ DATABASE_URL }).PULSE_TABLE_UNLOGGED).to.equal(undefined);
    expect(
      loadMigrateConfig({ DATABASE_URL, PULSE_TABLE_UNLOGGED: 'yes' }).PULSE_TABLE_UNLOGGED,
    ).to.equal(true);
    expect(
      problemsOf(() => loadMigrateConfig({ DATABASE_URL, PULSE_TABLE_UNLOGGED: 'sometimes' })).join(
        '\n',
      ),
    ).to.match(/PULSE_TABLE_UNLOGGED/);
  });

  it('refuses a cron expression that is not valid', () => {
    const problems = problemsOf(() =>
      loadSweeperConfig({ DATABASE_URL, SWEEP_SCHEDULE: '*/10 * * *' }),
    );
    expect(problems.join('\n')).to.match(/SWEEP_SCHEDULE must be a valid cron expression/);
  });

  for (const entry of ['api', 'sweeper', 'migrate', 'start'] satisfies EntryPointName[]) {
    it(`the ${entry} entry point exits 1 naming the variable when the configuration is wrong, never its password`, async () => {
      const result = await runEntryPoint(entry, {
        env: {
          DATABASE_URL: 'postgres://pulse:s3cr3t-pw@127.0.0.1:99999/pulse',
          LOG_LEVEL: 'silent',
        },
      });
      expect(result.code).to.equal(1);
      expect(result.stderr).to.match(
        /Invalid configuration:\n {2}- DATABASE_URL must be a postgres/,
      );
      expect(result.stderr).not.to.match(/ at .*\(/); // a message, not a stack trace
      expect(result.stderr).to.include('(got "postgres://pulse:***@127.0.0.1:99999/pulse")');
      expect(result.stdout + result.stderr).not.to.include('s3cr3t-pw');
    });
  }
});

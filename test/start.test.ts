import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { lockPulse } from './support/database.ts';
import { runEntryPoint, startEntryPoint, waitFor } from './support/entry-points.ts';
import { freePort, queryOnce } from './support/server.ts';
import { ensureClientBuilt } from './support/client-build.ts';

describe('npm start (the all-in-one stack)', function () {
  this.timeout(90_000);
  let parent: string;
  beforeEach(() => {
    parent = mkdtempSync(path.join(tmpdir(), 'pulse-start-'));
    chmodSync(parent, 0o755); // the embedded server runs as the unprivileged postgres user
  });
  afterEach(() => {
    rmSync(parent, { recursive: true, force: true });
  });

  /**
   * `npm start` with an embedded PostgreSQL in the test's folder, in a process group of its own
   * (as a terminal runs it), ready to serve.
   */
  async function startStack(env: Record<string, string> = {}) {
    ensureClientBuilt(); // npm start builds it (prestart); this runs dev/start.ts directly
    const [apiPort, pgPort] = [await freePort(), await freePort()];
    const stack = startEntryPoint('start', {
      env: {
        PORT: String(apiPort),
        EMBEDDED_PG_PORT: String(pgPort),
        EMBEDDED_PG_DATA_DIR: path.join(parent, 'pg'),
        METRICS_PORT: '0',
        LOG_LEVEL: 'warn',
        ...env,
      },
      ownProcessGroup: true,
    });
    const base = `http://127.0.0.1:${apiPort}`;
    // Its links are printed once they work.
    await stack.waitForOutput(/Pulse API: /, { timeoutMs: 75_000 });
    expect((await fetch(`${base}/healthz`)).status, 'the API when its link is printed').to.equal(
      200,
    );
    await stack.waitForHttp(`${base}/readyz`, { timeoutMs: 75_000 });
    const databaseUrl = `postgres://postgres:postgres@127.0.0.1:${pgPort}/pulse`;
    return { stack, base, apiPort, databaseUrl };
  }

  it('boots an embedded PostgreSQL, migrates, serves the API, and stops cleanly on SIGTERM', async () => {
    const { stack, base, apiPort, databaseUrl } = await startStack();
    expect(stack.output()).to.include(`Pulse API:  http://127.0.0.1:${apiPort}`);
    expect(stack.output()).to.include(`Demo page:  http://127.0.0.1:${apiPort}/demo/`);
    expect((await fetch(`${base}/demo/`)).status).to.equal(200);
    expect(stack.output()).to.match(new RegExp(`Database: +${databaseUrl.replaceAll('.', '\\.')}`));

    const update = await fetch(`${base}/status/update`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ user_id: 42 }),
    });
    expect(await update.json()).to.deep.equal({ status: 'success' });
    expect(await (await fetch(`${base}/status/42`)).json()).to.deep.include({
      user_id: 42,
      is_online: true,
    });
    const batch = await fetch(`${base}/status/batch`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify([{ user_id: 42 }, { user_id: 7 }]),
    });
    const statuses = (await batch.json()) as Array<Record<string, unknown>>;
    expect(statuses.map(({ user_id, is_online }) => ({ user_id, is_online }))).to.deep.equal([
      { user_id: 42, is_online: true },
      { user_id: 7, is_online: false },
    ]);
    expect(statuses[1]).to.have.property('last_seen', null);

    expect(await stack.stop('SIGTERM')).to.deep.equal({ code: 0, signal: null });
    // The API child is gone too.
    expect(await fetch(`${base}/healthz`).catch(() => 'refused')).to.equal('refused');
  });

  it('Ctrl-C stops the API and the sweeper before the database, in a few clean lines', async () => {
    const { stack, base, databaseUrl } = await startStack({ LOG_LEVEL: 'info' });
    // A heartbeat in flight at the Ctrl-C, held up by a table lock the test releases later:
    // it must still be written, so the database must outlive the API.
    const release = await lockPulse(databaseUrl);
    try {
      const inFlight = fetch(`${base}/status/update`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ user_id: 42 }),
      });
      await waitFor('the heartbeat to wait for the lock', async () => {
        const { rows } = await queryOnce<{ n: number }>(
          databaseUrl,
          `SELECT count(*)::int AS n FROM pg_stat_activity
           WHERE datname = current_database() AND wait_event_type = 'Lock'`,
        );
        return (rows[0]?.n ?? 0) > 0;
      });
      const before = stack.output().length;
      // A terminal's Ctrl-C: SIGINT to the whole foreground process group.
      stack.signalGroup('SIGINT');
      await stack.waitForOutput(/shutting down/);
      await release();
      expect((await inFlight).status).to.equal(200);
      const { code } = await stack.exited;
      const lines = stack.output().slice(before).trim().split('\n');
      expect(code, lines.join('\n')).to.equal(0);
      expect(lines.at(-1)).to.equal('stopped: the API, the sweeper and the embedded PostgreSQL');
      expect(lines.join('\n')).not.to.match(
        /connection lost|terminating connection|secretKey|processID|"level":(40|50|60)/,
      );
      expect(lines.length, lines.join('\n')).to.be.at.most(8);
    } finally {
      await release().catch(() => undefined); // already released unless the test failed
    }
  });

  it('exits 1 with the reason, and starts nothing, when the embedded database cannot start', async () => {
    // A broken data folder (as an interrupted initdb leaves it): initdb is skipped, the server
    // refuses to start on it.
    const dataDir = path.join(parent, 'pg');
    mkdirSync(dataDir);
    chmodSync(dataDir, 0o777);
    writeFileSync(path.join(dataDir, 'PG_VERSION'), '17\n');
    chmodSync(path.join(dataDir, 'PG_VERSION'), 0o666);
    const [apiPort, pgPort] = [await freePort(), await freePort()];
    const run = await runEntryPoint('start', {
      env: {
        PORT: String(apiPort),
        EMBEDDED_PG_PORT: String(pgPort),
        EMBEDDED_PG_DATA_DIR: dataDir,
        LOG_LEVEL: 'warn',
      },
      timeoutMs: 60_000,
    });
    expect(run.code, run.output).to.equal(1);
    expect(run.stderr).to.match(/^error: embedded PostgreSQL did not start on port \d+/m);
    expect(run.stderr).to.match(/caused by: .*could not access the server configuration file/);
    expect(run.stderr).not.to.match(/^\s+at /m); // a message, not a stack trace
    expect(run.stdout).not.to.include('Pulse API:');
    expect(await fetch(`http://127.0.0.1:${apiPort}/healthz`).catch(() => 'refused')).to.equal(
      'refused',
    );
  });

  it('exits 1 with the reason when the database in DATABASE_URL cannot be reached', async () => {
    const apiPort = await freePort();
    const run = await runEntryPoint('start', {
      env: {
        DATABASE_URL: `postgres://postgres@127.0.0.1:${await freePort()}/nowhere`,
        PORT: String(apiPort),
        LOG_LEVEL: 'warn',
      },
    });
    expect(run.code, run.output).to.equal(1);
    expect(run.stderr).to.match(/^error: .*ECONNREFUSED/m);
    expect(run.stderr).not.to.match(/^\s+at /m);
    expect(run.stdout).not.to.include('Pulse API:');
    expect(await fetch(`http://127.0.0.1:${apiPort}/healthz`).catch(() => 'refused')).to.equal(
      'refused',
    );
  });
});

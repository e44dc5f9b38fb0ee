import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { runEntryPoint, startEntryPoint } from './support/entry-points.ts';
import { freePort } from './support/server.ts';

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

  it('boots an embedded PostgreSQL, migrates, serves the API, and stops cleanly on SIGTERM', async () => {
    const [apiPort, pgPort] = [await freePort(), await freePort()];
    const stack = startEntryPoint('start', {
      env: {
        PORT: String(apiPort),
        EMBEDDED_PG_PORT: String(pgPort),
        EMBEDDED_PG_DATA_DIR: path.join(parent, 'pg'),
        METRICS_PORT: '0',
        LOG_LEVEL: 'warn',
      },
    });
    const base = `http://127.0.0.1:${apiPort}`;
    await stack.waitForHttp(`${base}/readyz`, { timeoutMs: 60_000 });
    expect(stack.output()).to.include(`Pulse API:  http://127.0.0.1:${apiPort}`);
    expect(stack.output()).to.match(
      new RegExp(`Database: +postgres://postgres:postgres@127\\.0\\.0\\.1:${pgPort}/pulse`),
    );

    const update = await fetch(`${base}/status/update`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ user_id: 42 }),
    });
    expect(await update.json()).to.deep.equal({ status: 'success' });
    expect(await (await fetch(`${base}/status/42`)).json()).to.deep.equal({
      user_id: 42,
      is_online: true,
    });
    const batch = await fetch(`${base}/status/batch`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify([{ user_id: 42 }, { user_id: 7 }]),
    });
    expect(await batch.json()).to.deep.equal([
      { user_id: 42, is_online: true },
      { user_id: 7, is_online: false },
    ]);

    expect(await stack.stop('SIGTERM')).to.deep.equal({ code: 0, signal: null });
    // The API child is gone too.
    expect(await fetch(`${base}/healthz`).catch(() => 'refused')).to.equal('refused');
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

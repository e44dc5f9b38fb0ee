import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { freePort } from '../dev/embedded-postgres.ts';
import { lockPulse } from './support/database.ts';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * `npm start` with an embedded PostgreSQL in a temporary folder, in a process group of its own
 * (as a terminal runs it), ready to serve.
 */
async function startStack(env: Record<string, string> = {}) {
  const parent = mkdtempSync(path.join(tmpdir(), 'pulse-start-'));
  chmodSync(parent, 0o755);
  const [apiPort, pgPort] = [await freePort(), await freePort()];
  const stack = spawn(process.execPath, ['--import', 'tsx', 'dev/start.ts'], {
    env: {
      PATH: process.env.PATH,
      PORT: String(apiPort),
      EMBEDDED_PG_PORT: String(pgPort),
      EMBEDDED_PG_DATA_DIR: path.join(parent, 'pg'),
      METRICS_PORT: '0',
      LOG_LEVEL: 'warn',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  let output = '';
  stack.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
  stack.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const exited = once(stack, 'exit') as Promise<[number | null]>;
  const cleanup = () => {
    if (stack.exitCode === null) stack.kill('SIGKILL');
    rmSync(parent, { recursive: true, force: true });
  };
  const base = `http://127.0.0.1:${apiPort}`;
  try {
    for (let i = 0; !(await fetch(`${base}/readyz`).catch(() => undefined))?.ok; i += 1) {
      if (i > 600 || stack.exitCode !== null)
        throw new Error(`the stack did not start:\n${output}`);
      await sleep(100);
    }
  } catch (error) {
    cleanup();
    throw error;
  }
  return { stack, base, apiPort, pgPort, exited, output: () => output, cleanup };
}

describe('npm start (the all-in-one stack)', function () {
  this.timeout(90_000);

  it('boots an embedded PostgreSQL, migrates, serves the API, and stops cleanly on SIGTERM', async () => {
    const { stack, base, apiPort, pgPort, exited, output, cleanup } = await startStack();
    try {
      expect(output()).to.include(`Pulse API:  http://127.0.0.1:${apiPort}`);
      expect(output()).to.match(
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

      stack.kill('SIGTERM');
      const [code] = await exited;
      expect(code).to.equal(0);
      // The API child is gone too.
      expect(await fetch(`${base}/healthz`).catch(() => 'refused')).to.equal('refused');
    } finally {
      cleanup();
    }
  });

  it('Ctrl-C stops the API and the sweeper before the database, in a few clean lines', async () => {
    const { stack, base, pgPort, exited, output, cleanup } = await startStack({
      LOG_LEVEL: 'info',
    });
    try {
      // A heartbeat in flight at the Ctrl-C, held up by a table lock the test releases later:
      // it must still be written, so the database must outlive the API.
      const release = await lockPulse(`postgres://postgres:postgres@127.0.0.1:${pgPort}/pulse`);
      const inFlight = fetch(`${base}/status/update`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ user_id: 42 }),
      });
      await sleep(300);
      const before = output().length;
      // A terminal's Ctrl-C: SIGINT to the whole foreground process group.
      process.kill(-stack.pid!, 'SIGINT');
      await sleep(500);
      await release();
      expect((await inFlight).status).to.equal(200);
      const [code] = await exited;
      const lines = output().slice(before).trim().split('\n');
      expect(code, lines.join('\n')).to.equal(0);
      expect(lines.join('\n')).not.to.match(
        /connection lost|terminating connection|secretKey|processID|"level":(40|50|60)/,
      );
      expect(lines.length, lines.join('\n')).to.be.at.most(8);
    } finally {
      cleanup();
    }
  });
});

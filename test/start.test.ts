import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { freePort } from '../dev/embedded-postgres.ts';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe('npm start (the all-in-one stack)', function () {
  this.timeout(90_000);

  it('boots an embedded PostgreSQL, migrates, serves the API, and stops cleanly on SIGTERM', async () => {
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
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    stack.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    stack.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
    const exited = once(stack, 'exit') as Promise<[number | null]>;
    try {
      const base = `http://127.0.0.1:${apiPort}`;
      for (let i = 0; !(await fetch(`${base}/readyz`).catch(() => undefined))?.ok; i += 1) {
        if (i > 600 || stack.exitCode !== null)
          throw new Error(`the stack did not start:\n${output}`);
        await sleep(100);
      }
      expect(output).to.include(`Pulse API:  http://127.0.0.1:${apiPort}`);
      expect(output).to.match(
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
      if (stack.exitCode === null) stack.kill('SIGKILL');
      rmSync(parent, { recursive: true, force: true });
    }
  });
});

import { randomBytes } from 'node:crypto';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { expect } from 'chai';
import { freePort } from '../dev/embedded-postgres.ts';
import { serverUrl } from './support/database.ts';
import { adminQuery, uniqueName, withDatabase } from './support/server.ts';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe('npm start with a DATABASE_URL that holds a password', function () {
  this.timeout(60_000);
  const role = uniqueName('pulse_start_role');
  const database = uniqueName('pulse_start');
  const password = `pw-${randomBytes(12).toString('hex')}`;

  before(async () => {
    await adminQuery(serverUrl(), `CREATE ROLE ${role} LOGIN PASSWORD '${password}'`);
    await adminQuery(serverUrl(), `CREATE DATABASE ${database} OWNER ${role}`);
  });
  after(async () => {
    await adminQuery(serverUrl(), `DROP DATABASE IF EXISTS ${database} WITH (FORCE)`);
    await adminQuery(serverUrl(), `DROP ROLE IF EXISTS ${role}`);
  });

  it('prints the database URL with the password masked, and never the password', async () => {
    const url = new URL(withDatabase(serverUrl(), database));
    url.username = role;
    url.password = password;
    const apiPort = await freePort();
    const stack = spawn(process.execPath, ['--import', 'tsx', 'dev/start.ts'], {
      env: {
        PATH: process.env.PATH,
        DATABASE_URL: url.toString(),
        PORT: String(apiPort),
        METRICS_PORT: '0',
        LOG_LEVEL: 'info',
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    stack.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    stack.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
    const exited = once(stack, 'exit');
    try {
      const base = `http://127.0.0.1:${apiPort}`;
      for (let i = 0; !(await fetch(`${base}/readyz`).catch(() => undefined))?.ok; i += 1) {
        if (i > 400 || stack.exitCode !== null)
          throw new Error(`the stack did not start:\n${output}`);
        await sleep(100);
      }
      const shown = new URL(url);
      shown.password = '***';
      // npm start prints its links once the API answers, a moment after /readyz does here.
      const line = `Database:   ${shown.toString()}`;
      for (let i = 0; !output.includes(line); i += 1) {
        if (i > 200 || stack.exitCode !== null) throw new Error(`no line "${line}" in:\n${output}`);
        await sleep(50);
      }
      stack.kill('SIGTERM');
      await exited;
      expect(output).not.to.include(password);
    } finally {
      if (stack.exitCode === null && stack.signalCode === null) stack.kill('SIGKILL');
    }
  });
});

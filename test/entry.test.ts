import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';
import { createTestDatabase, type TestDatabase } from './support/database.ts';
import { randomSecret } from './support/tokens.ts';

const MAIN = fileURLToPath(new URL('../api/main.ts', import.meta.url));

interface Run {
  output: string;
  code: number | null;
}

/**
 * Runs the real API entry point with `env`. Once it says it is listening (or exits), it gets a
 * SIGTERM; resolves with everything it printed and its exit code.
 */
async function runApi(env: Record<string, string>): Promise<Run> {
  const childEnv: NodeJS.ProcessEnv = { ...process.env, HOST: '127.0.0.1', PORT: '0', ...env };
  for (const name of Object.keys(childEnv)) {
    if (name.startsWith('AUTH_') && !(name in env)) delete childEnv[name];
  }
  const child = spawn(process.execPath, ['--import', 'tsx', MAIN], { env: childEnv });
  let output = '';
  let signalled = false;
  const collect = (chunk: Buffer) => {
    output += chunk.toString();
    // Once: a second SIGTERM would force exit 1.
    if (!signalled && output.includes('pulse api listening')) {
      signalled = true;
      child.kill('SIGTERM');
    }
  };
  child.stdout.on('data', collect);
  child.stderr.on('data', collect);
  // Never leave a stray process behind, whatever happens.
  const guard = setTimeout(() => child.kill('SIGKILL'), 20_000);
  try {
    const [code] = (await once(child, 'exit')) as [number | null];
    return { output, code };
  } finally {
    clearTimeout(guard);
  }
}

describe('the API entry point and AUTH_MODE', () => {
  let database: TestDatabase;

  before(async () => {
    database = await createTestDatabase();
  });
  after(async () => {
    await database.drop();
  });

  it('warns at start that anyone can set anyone’s status when AUTH_MODE=none', async () => {
    const { output, code } = await runApi({ DATABASE_URL: database.url });
    expect(output).to.match(/"level":40.*AUTH_MODE=none.*anyone can set anyone's status/);
    expect(output).to.include('pulse api listening');
    expect(code, output).to.equal(0);
  });

  it('starts without the warning when AUTH_MODE=jwt', async () => {
    const { output, code } = await runApi({
      DATABASE_URL: database.url,
      AUTH_MODE: 'jwt',
      AUTH_JWT_SECRET: randomSecret(),
    });
    expect(output).to.include('pulse api listening');
    expect(output).not.to.include('AUTH_MODE=none');
    expect(code).to.equal(0);
  });

  it('refuses to start with AUTH_MODE=jwt and a short secret, naming it without showing it', async () => {
    const { output, code } = await runApi({
      DATABASE_URL: database.url,
      AUTH_MODE: 'jwt',
      AUTH_JWT_SECRET: 'too-short-secret',
    });
    expect(code).to.equal(1);
    expect(output).to.include('AUTH_JWT_SECRET must be at least 32 bytes');
    expect(output).not.to.include('too-short-secret');
    expect(output).not.to.include('pulse api listening');
  });
});

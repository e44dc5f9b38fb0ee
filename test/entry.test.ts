import { expect } from 'chai';
import { createTestDatabase, type TestDatabase } from './support/database.ts';
import { runEntryPoint, startEntryPoint, type FinishedRun } from './support/entry-points.ts';
import { randomSecret } from './support/tokens.ts';

/**
 * Runs the real API entry point with `env`. Once it says it is listening it gets a SIGTERM; a
 * refused start exits by itself. Resolves with everything it printed and its exit code.
 */
async function runApi(env: Record<string, string>): Promise<FinishedRun> {
  const api = startEntryPoint('api', { env: { HOST: '127.0.0.1', PORT: '0', ...env } });
  await Promise.race([
    api.exited,
    api.waitForOutput('pulse api listening', { timeoutMs: 45_000 }).catch(() => undefined),
  ]);
  const status = await api.stop();
  return { ...status, stdout: api.stdout(), stderr: api.stderr(), output: api.output() };
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
    const { output, code } = await runEntryPoint('api', {
      env: {
        DATABASE_URL: database.url,
        HOST: '127.0.0.1',
        PORT: '0',
        AUTH_MODE: 'jwt',
        AUTH_JWT_SECRET: 'too-short-secret',
      },
    });
    expect(code).to.equal(1);
    expect(output).to.include('AUTH_JWT_SECRET must be at least 32 bytes');
    expect(output).not.to.include('too-short-secret');
    expect(output).not.to.include('pulse api listening');
  });
});

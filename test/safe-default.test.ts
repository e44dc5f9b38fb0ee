/**
 * Safe by default (issue 24): an API without authentication refuses to listen where other machines
 * can reach it, unless the operator says so twice.
 */
import { expect } from 'chai';
import { ConfigError, isLoopbackHost, loadApiConfig } from '../lib/infra/config.ts';
import { serverUrl } from './support/database.ts';
import { runEntryPoint, startApi } from './support/entry-points.ts';
import { randomSecret } from './support/tokens.ts';

const DATABASE_URL = 'postgres://pulse@127.0.0.1:5432/pulse';

function problemsOf(env: Record<string, string>): string[] {
  try {
    loadApiConfig({ DATABASE_URL, ...env });
  } catch (error) {
    expect(error).to.be.instanceOf(ConfigError);
    return (error as ConfigError).problems;
  }
  throw new Error(`expected a ConfigError for ${JSON.stringify(env)}`);
}

describe('safe by default: no open API on a public address', () => {
  it('tells loopback hosts from the others', () => {
    for (const host of ['127.0.0.1', '127.1.2.3', '::1', '[::1]', 'localhost', '::ffff:127.0.0.1'])
      expect(isLoopbackHost(host), host).to.equal(true);
    for (const host of ['0.0.0.0', '::', '10.0.0.5', 'api.example.com', '128.0.0.1', '::2'])
      expect(isLoopbackHost(host), host).to.equal(false);
  });

  it('refuses the default AUTH_MODE on a public HOST, saying how to fix it', () => {
    const [problem, ...others] = problemsOf({ HOST: '0.0.0.0' });
    expect(others).to.deep.equal([]);
    expect(problem).to.match(/^HOST "0\.0\.0\.0" is not a loopback address/);
    expect(problem).to.include('AUTH_MODE=none, the default');
    expect(problem).to.include('AUTH_MODE=jwt');
    expect(problem).to.include('AUTH_MODE=none and AUTH_NONE_ALLOW_PUBLIC=true');
  });

  it('refuses AUTH_MODE=none on a public HOST without the acknowledgement, and the acknowledgement without AUTH_MODE=none written out', () => {
    expect(problemsOf({ HOST: '0.0.0.0', AUTH_MODE: 'none' })[0]).to.match(/^HOST /);
    expect(problemsOf({ HOST: '0.0.0.0', AUTH_NONE_ALLOW_PUBLIC: 'true' })[0]).to.match(/^HOST /);
  });

  it('accepts AUTH_MODE=none on a public HOST when both are set, loopback always, and jwt anywhere', () => {
    const open = loadApiConfig({
      DATABASE_URL,
      HOST: '0.0.0.0',
      AUTH_MODE: 'none',
      AUTH_NONE_ALLOW_PUBLIC: 'true',
    });
    expect(open.AUTH_NONE_ALLOW_PUBLIC).to.equal(true);
    expect(loadApiConfig({ DATABASE_URL }).HOST).to.equal('127.0.0.1');
    const jwt = loadApiConfig({
      DATABASE_URL,
      HOST: '0.0.0.0',
      AUTH_MODE: 'jwt',
      AUTH_JWT_SECRET: randomSecret(),
    });
    expect(jwt.AUTH_MODE).to.equal('jwt');
  });

  it('refuses the acknowledgement with AUTH_MODE=jwt (it would mean nothing)', () => {
    const problems = problemsOf({
      AUTH_MODE: 'jwt',
      AUTH_JWT_SECRET: randomSecret(),
      AUTH_NONE_ALLOW_PUBLIC: 'true',
    });
    expect(problems).to.deep.equal([
      'AUTH_NONE_ALLOW_PUBLIC is set but AUTH_MODE is "jwt": it only applies to AUTH_MODE=none, unset it (got "true")',
    ]);
  });

  it('the API process exits 1 with the message on a public HOST, and starts when acknowledged', async function () {
    this.timeout(60_000);
    const refused = await runEntryPoint('api', {
      env: { DATABASE_URL: serverUrl(), HOST: '0.0.0.0', PORT: '0' },
    });
    expect(refused.code).to.equal(1);
    expect(refused.output).to.include('AUTH_NONE_ALLOW_PUBLIC=true');
    const { api } = await startApi({
      DATABASE_URL: serverUrl(),
      HOST: '0.0.0.0',
      AUTH_MODE: 'none',
      AUTH_NONE_ALLOW_PUBLIC: 'true',
    });
    expect(await api.stop()).to.deep.include({ code: 0 });
  });
});

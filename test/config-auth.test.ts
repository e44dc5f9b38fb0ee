import { generateKeyPairSync, KeyObject } from 'node:crypto';
import { expect } from 'chai';
import { ConfigError, loadApiConfig } from '../lib/infra/config.ts';
import { asymmetric, randomSecret } from './support/tokens.ts';

const DATABASE_URL = 'postgres://pulse@127.0.0.1:5432/pulse';

function configError(env: Record<string, string>): ConfigError {
  try {
    loadApiConfig({ DATABASE_URL, ...env });
  } catch (error) {
    expect(error).to.be.instanceOf(ConfigError);
    return error as ConfigError;
  }
  throw new Error(`expected a ConfigError for ${JSON.stringify(env)}`);
}

/** Asserts loading fails with one problem that starts with `variable`. */
function expectProblem(env: Record<string, string>, variable: string, pattern: RegExp): string {
  const { problems } = configError(env);
  const problem = problems.find((p) => p.startsWith(`${variable} `));
  expect(problem, `a problem about ${variable} in ${JSON.stringify(problems)}`).to.be.a('string');
  expect(problem).to.match(pattern);
  return problem ?? '';
}

describe('API configuration: authentication', () => {
  const secret = randomSecret();

  it('defaults to AUTH_MODE=none with a 5 s clock tolerance', () => {
    const config = loadApiConfig({ DATABASE_URL });
    expect(config.AUTH_MODE).to.equal('none');
    expect(config.AUTH_CLOCK_TOLERANCE_SECONDS).to.equal(5);
    expect(config.AUTH_JWT_SECRET).to.equal(undefined);
  });

  it('accepts jwt with a secret, issuer, audience and tolerance', () => {
    const config = loadApiConfig({
      DATABASE_URL,
      AUTH_MODE: 'jwt',
      AUTH_JWT_SECRET: secret,
      AUTH_JWT_ISSUER: 'https://auth.example.com',
      AUTH_JWT_AUDIENCE: 'pulse',
      AUTH_CLOCK_TOLERANCE_SECONDS: '30',
    });
    expect(config).to.include({
      AUTH_MODE: 'jwt',
      AUTH_JWT_AUDIENCE: 'pulse',
      AUTH_CLOCK_TOLERANCE_SECONDS: 30,
    });
  });

  for (const algorithm of ['RS256', 'ES256'] as const) {
    it(`accepts jwt with an ${algorithm} public key, also with \\n escapes on one line`, async () => {
      const { publicKeyPem } = await asymmetric(algorithm);
      for (const pem of [publicKeyPem, publicKeyPem.trim().replaceAll('\n', '\\n')]) {
        const config = loadApiConfig({ DATABASE_URL, AUTH_MODE: 'jwt', AUTH_JWT_PUBLIC_KEY: pem });
        // Parsed once, by the configuration: the API gets the key object and its algorithm.
        expect(config.AUTH_JWT_PUBLIC_KEY?.algorithm).to.equal(algorithm);
        expect(config.AUTH_JWT_PUBLIC_KEY?.key).to.be.instanceOf(KeyObject);
      }
    });
  }

  it('rejects an unknown AUTH_MODE', () => {
    expectProblem({ AUTH_MODE: 'basic' }, 'AUTH_MODE', /"none" or "jwt"/);
  });

  it('jwt mode needs a secret or a public key', () => {
    expectProblem({ AUTH_MODE: 'jwt' }, 'AUTH_JWT_SECRET', /AUTH_JWT_PUBLIC_KEY is required/);
  });

  it('jwt mode refuses both a secret and a public key', async () => {
    const { publicKeyPem } = await asymmetric('ES256');
    expectProblem(
      { AUTH_MODE: 'jwt', AUTH_JWT_SECRET: secret, AUTH_JWT_PUBLIC_KEY: publicKeyPem },
      'AUTH_JWT_PUBLIC_KEY',
      /exactly one/,
    );
  });

  it('refuses a secret shorter than 32 bytes, without echoing it', () => {
    const short = 'hunter2-hunter2-hunter2-hunter2'; // 31 bytes
    const problem = expectProblem(
      { AUTH_MODE: 'jwt', AUTH_JWT_SECRET: short },
      'AUTH_JWT_SECRET',
      /at least 32 bytes/,
    );
    expect(problem).not.to.include('hunter2');
    expect(problem).to.include('31 bytes, not shown');
  });

  it('refuses a public key that is not a PEM', () => {
    expectProblem(
      { AUTH_MODE: 'jwt', AUTH_JWT_PUBLIC_KEY: 'not a key' },
      'AUTH_JWT_PUBLIC_KEY',
      /PEM public key/,
    );
    const broken = '-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----';
    expectProblem(
      { AUTH_MODE: 'jwt', AUTH_JWT_PUBLIC_KEY: broken },
      'AUTH_JWT_PUBLIC_KEY',
      /PEM public key/,
    );
  });

  it('refuses a private key, a short RSA key and an unsupported curve', () => {
    const rsa1024 = generateKeyPairSync('rsa', { modulusLength: 1024 });
    const p384 = generateKeyPairSync('ec', { namedCurve: 'P-384' });
    const pem = (key: typeof rsa1024.publicKey, type: 'spki' | 'pkcs8') =>
      key.export({ format: 'pem', type }).toString();
    expectProblem(
      { AUTH_MODE: 'jwt', AUTH_JWT_PUBLIC_KEY: pem(p384.privateKey, 'pkcs8') },
      'AUTH_JWT_PUBLIC_KEY',
      /not a private key/,
    );
    expectProblem(
      { AUTH_MODE: 'jwt', AUTH_JWT_PUBLIC_KEY: pem(rsa1024.publicKey, 'spki') },
      'AUTH_JWT_PUBLIC_KEY',
      /at least 2048 bits/,
    );
    expectProblem(
      { AUTH_MODE: 'jwt', AUTH_JWT_PUBLIC_KEY: pem(p384.publicKey, 'spki') },
      'AUTH_JWT_PUBLIC_KEY',
      /RSA \(RS256\) or EC P-256/,
    );
  });

  it('refuses a clock tolerance that is not a whole number from 0 to 300', () => {
    for (const value of ['-1', '301', '1.5', 'five']) {
      expectProblem(
        { AUTH_CLOCK_TOLERANCE_SECONDS: value },
        'AUTH_CLOCK_TOLERANCE_SECONDS',
        /must/,
      );
    }
  });

  it('refuses a blank issuer or audience', () => {
    const env = { AUTH_MODE: 'jwt', AUTH_JWT_SECRET: secret };
    expectProblem({ ...env, AUTH_JWT_ISSUER: '   ' }, 'AUTH_JWT_ISSUER', /must not be empty/);
    expectProblem({ ...env, AUTH_JWT_AUDIENCE: '  ' }, 'AUTH_JWT_AUDIENCE', /must not be empty/);
  });

  it('refuses JWT settings while AUTH_MODE is none (the API would silently be open)', () => {
    for (const [name, value] of [
      ['AUTH_JWT_SECRET', secret],
      ['AUTH_JWT_ISSUER', 'https://auth.example.com'],
      ['AUTH_JWT_AUDIENCE', 'pulse'],
    ] as const) {
      const problem = expectProblem({ [name]: value }, name, /AUTH_MODE is "none"/);
      expect(problem).not.to.include(secret);
    }
  });

  it('reads AUTH_MAX_TOKEN_LIFETIME_SECONDS, unset by default, and refuses a bad one', () => {
    const env = { AUTH_MODE: 'jwt', AUTH_JWT_SECRET: secret };
    expect(loadApiConfig({ DATABASE_URL, ...env }).AUTH_MAX_TOKEN_LIFETIME_SECONDS).to.equal(
      undefined,
    );
    expect(
      loadApiConfig({ DATABASE_URL, ...env, AUTH_MAX_TOKEN_LIFETIME_SECONDS: '3600' })
        .AUTH_MAX_TOKEN_LIFETIME_SECONDS,
    ).to.equal(3600);
    for (const value of ['0', '1h', '-5']) {
      expectProblem(
        { ...env, AUTH_MAX_TOKEN_LIFETIME_SECONDS: value },
        'AUTH_MAX_TOKEN_LIFETIME_SECONDS',
        /must/,
      );
    }
    expectProblem(
      { AUTH_MAX_TOKEN_LIFETIME_SECONDS: '3600' },
      'AUTH_MAX_TOKEN_LIFETIME_SECONDS',
      /AUTH_MODE is "none"/,
    );
  });

  it('refuses a BODY_LIMIT_BYTES or BATCH_MAX_IDS out of range', () => {
    expectProblem({ BODY_LIMIT_BYTES: '10' }, 'BODY_LIMIT_BYTES', /at least 1024/);
    expectProblem({ BATCH_MAX_IDS: '0' }, 'BATCH_MAX_IDS', /at least 1/);
  });
});

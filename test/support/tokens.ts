/**
 * Mints JWTs for the tests, the way an identity provider would: HS256 with a shared secret, or
 * RS256/ES256 with a key pair generated here (only the public key goes to the API).
 */
import { randomBytes } from 'node:crypto';
import { exportSPKI, generateKeyPair, SignJWT, type JWTPayload } from 'jose';

export const GATEWAY_SCOPE = 'presence:write:any';
export const ISSUER = 'https://auth.pulse.test';
export const AUDIENCE = 'pulse-api';

export interface TokenOptions {
  /** Claims set as given (any JSON type, for the bad-claim tests); `undefined` leaves one out. */
  claims?: Record<string, unknown>;
  /** Seconds from now; negative is in the past. Default 300. `null` leaves exp out. */
  expiresIn?: number | null;
  /** Seconds from now for nbf; absent by default. */
  notBefore?: number;
  /** Default ISSUER; `null` leaves iss out. */
  issuer?: string | null;
  /** Default AUDIENCE; `null` leaves aud out. */
  audience?: string | null;
}

type SigningKey = Uint8Array | Awaited<ReturnType<typeof generateKeyPair>>['privateKey'];

export class TokenMinter {
  constructor(
    readonly algorithm: 'HS256' | 'RS256' | 'ES256',
    private readonly key: SigningKey,
    /** The key id put in the header (`kid`), as a JWKS-publishing provider does. */
    private readonly kid?: string,
  ) {}

  async sign(options: TokenOptions = {}): Promise<string> {
    const now = Math.floor(Date.now() / 1000);
    const payload: JWTPayload = { iat: now };
    const { expiresIn = 300, issuer = ISSUER, audience = AUDIENCE } = options;
    if (expiresIn !== null) payload.exp = now + expiresIn;
    if (options.notBefore !== undefined) payload.nbf = now + options.notBefore;
    if (issuer !== null) payload.iss = issuer;
    if (audience !== null) payload.aud = audience;
    for (const [name, value] of Object.entries(options.claims ?? {})) {
      if (value === undefined) delete payload[name];
      else payload[name] = value;
    }
    return new SignJWT(payload)
      .setProtectedHeader({
        alg: this.algorithm,
        typ: 'JWT',
        ...(this.kid === undefined ? {} : { kid: this.kid }),
      })
      .sign(this.key);
  }

  /** A user's token: `sub` is the user id. */
  user(userId: number | string, options: TokenOptions = {}): Promise<string> {
    return this.sign({ ...options, claims: { sub: String(userId), ...options.claims } });
  }

  /** A gateway's token: scope presence:write:any, `sub` names the gateway. */
  gateway(options: TokenOptions = {}): Promise<string> {
    return this.sign({
      ...options,
      claims: { sub: 'gateway-eu-1', scope: `presence:read ${GATEWAY_SCOPE}`, ...options.claims },
    });
  }
}

export function randomSecret(): string {
  return randomBytes(48).toString('base64');
}

export function hs256(secret: string): TokenMinter {
  return new TokenMinter('HS256', new TextEncoder().encode(secret));
}

/** A fresh key pair: the minter signs with the private key, the PEM is for AUTH_JWT_PUBLIC_KEY. */
export async function asymmetric(
  algorithm: 'RS256' | 'ES256',
): Promise<{ minter: TokenMinter; publicKeyPem: string }> {
  const { privateKey, publicKey } = await generateKeyPair(algorithm, { extractable: true });
  return {
    minter: new TokenMinter(algorithm, privateKey),
    publicKeyPem: await exportSPKI(publicKey),
  };
}

export const bearer = (token: string): Record<string, string> => ({
  authorization: `Bearer ${token}`,
});

/** The env for an app in AUTH_MODE=jwt with HS256, issuer and audience checked. */
export function jwtEnv(secret: string, extra: Record<string, string> = {}): Record<string, string> {
  return {
    AUTH_MODE: 'jwt',
    AUTH_JWT_SECRET: secret,
    AUTH_JWT_ISSUER: ISSUER,
    AUTH_JWT_AUDIENCE: AUDIENCE,
    AUTH_CLOCK_TOLERANCE_SECONDS: '5',
    ...extra,
  };
}

/**
 * Who is calling, and what they may do. Built once from the configuration:
 *
 * - AUTH_MODE=none: no check at all; every caller may read and write any user (local use only).
 * - AUTH_MODE=jwt: every request carries `Authorization: Bearer <JWT>`, verified with jose against
 *   AUTH_JWT_SECRET (HS256) or AUTH_JWT_PUBLIC_KEY (RS256 or ES256, decided by the key). `exp` is
 *   required; `exp`/`nbf` are checked with AUTH_CLOCK_TOLERANCE_SECONDS of leeway; `iss`/`aud` are
 *   checked when AUTH_JWT_ISSUER/AUTH_JWT_AUDIENCE are set. With AUTH_MAX_TOKEN_LIFETIME_SECONDS,
 *   `iat` is required too and `exp - iat` may not exceed it.
 *
 * Claims: `sub` is the user id in plain decimal ("42"), the same rule as a path user id. `scope`
 * is a space-separated string (RFC 8693), or an array of strings; `presence:write:any` makes the
 * caller a gateway that may send heartbeats for any users. A token whose `sub` is not a user id is
 * accepted only with that scope (a gateway's own name in `sub` is fine); otherwise it is 401.
 *
 * The stream (GET /status/stream) also takes the token as `access_token` in the query, because a
 * browser's EventSource cannot send headers; request log lines show that parameter redacted,
 * however its name is percent-encoded.
 */
import type { KeyObject } from 'node:crypto';
import { unescape } from 'node:querystring';
import type { Request, RequestHandler } from 'express';
import { errors, jwtVerify, type JWTPayload } from 'jose';
import type { ApiConfig } from '../../lib/infra/config.ts';
import { HttpError } from './errors.ts';
import { requestSlot } from './request-locals.ts';
import { parseUserIdParam } from './validation.ts';

export const GATEWAY_SCOPE = 'presence:write:any';
const REALM = 'pulse';

/** The authenticated caller. */
export interface Principal {
  /** The user the caller is (from `sub`); absent for a gateway whose `sub` is not a user id. */
  userId?: number;
  /** A gateway (or AUTH_MODE=none): may send heartbeats for any users. */
  canWriteAny: boolean;
  /** When the token expires (ms since the epoch); a stream ends then. Absent: never. */
  expiresAt?: number;
}

export interface AuthenticateOptions {
  /**
   * Also accept the token as the `access_token` query parameter (RFC 6750 section 2.3), for the
   * stream: a browser's EventSource cannot send headers. Never both at once (400).
   */
  queryToken?: boolean;
}

/**
 * `url` with the value of any access_token parameter replaced, for log lines. Names are compared
 * decoded, as the query parser (node:querystring) decodes them: `access%5Ftoken=` and
 * `%61ccess_token=` are read as access_token too, so they must be redacted as one.
 */
export function redactAccessToken(url: string): string {
  const query = url.indexOf('?');
  if (query === -1) return url;
  const hash = url.indexOf('#', query);
  const end = hash === -1 ? url.length : hash;
  const parameters = url
    .slice(query + 1, end)
    .split('&')
    .map((parameter) => {
      const equals = parameter.indexOf('=');
      const name = equals === -1 ? parameter : parameter.slice(0, equals);
      return isAccessTokenName(name) ? `${name}=[redacted]` : parameter;
    });
  return `${url.slice(0, query + 1)}${parameters.join('&')}${url.slice(end)}`;
}

function isAccessTokenName(raw: string): boolean {
  // querystring.unescape never throws: broken escapes stay as they are, as the parser leaves them.
  return unescape(raw.replaceAll('+', ' ')).toLowerCase().includes('access_token');
}

export type AuthConfig = Pick<
  ApiConfig,
  | 'AUTH_MODE'
  | 'AUTH_JWT_SECRET'
  | 'AUTH_JWT_PUBLIC_KEY'
  | 'AUTH_JWT_ISSUER'
  | 'AUTH_JWT_AUDIENCE'
  | 'AUTH_CLOCK_TOLERANCE_SECONDS'
> &
  Partial<Pick<ApiConfig, 'AUTH_MAX_TOKEN_LIFETIME_SECONDS'>>;

// Kept in res.locals (api/edge/request-locals.ts) rather than a WeakMap keyed by the request: an entry
// per request cost the garbage collector more (docs/request-cost.md).
const principalSlot = requestSlot<Principal>('principal');

/** The principal `authenticate` attached to this request. */
export function principalOf(req: Request): Principal {
  const principal = principalSlot.ofRequest(req);
  // A route that reads the principal without the middleware in front of it is a programming error.
  if (!principal) throw new Error('no principal: the authenticate middleware did not run');
  return principal;
}

/** Throws 403 forbidden unless the caller may send heartbeats for every one of `userIds`. */
export function assertMayWrite(principal: Principal, userIds: readonly number[]): void {
  if (principal.canWriteAny) return;
  const other = userIds.find((id) => id !== principal.userId);
  if (other === undefined) return;
  throw new HttpError(
    'forbidden',
    `this token may only send heartbeats for user ${principal.userId}, not ${other}; ` +
      `reporting for other users needs the ${GATEWAY_SCOPE} scope`,
    {
      'WWW-Authenticate': `Bearer realm="${REALM}", error="insufficient_scope", scope="${GATEWAY_SCOPE}"`,
    },
  );
}

function unauthorized(code: 'unauthorized' | 'invalid_token', message: string): HttpError {
  // RFC 6750: no error attribute when no credentials were sent at all.
  const challenge =
    code === 'unauthorized'
      ? `Bearer realm="${REALM}"`
      : `Bearer realm="${REALM}", error="invalid_token", error_description="${message.replaceAll('"', "'")}"`;
  return new HttpError(code, message, { 'WWW-Authenticate': challenge });
}

/** Three base64url parts: anything else is refused before jose sees it. */
const BEARER = /^Bearer +([\w-]+\.[\w-]+\.[\w-]*) *$/i;
const JWT = /^[\w-]+\.[\w-]+\.[\w-]*$/;
const MAX_TOKEN_LENGTH = 8192;

function scopesOf(payload: JWTPayload): string[] {
  const scope = payload.scope;
  if (scope === undefined) return [];
  if (typeof scope === 'string') return scope.split(' ').filter(Boolean);
  if (Array.isArray(scope) && scope.every((s) => typeof s === 'string')) return scope;
  throw unauthorized(
    'invalid_token',
    'the scope claim must be a space-separated string or an array of strings',
  );
}

function principalFrom(payload: JWTPayload): Principal {
  const canWriteAny = scopesOf(payload).includes(GATEWAY_SCOPE);
  const expiry = typeof payload.exp === 'number' ? { expiresAt: payload.exp * 1000 } : {};
  let userId: number | undefined;
  if (typeof payload.sub === 'string') {
    try {
      userId = parseUserIdParam(payload.sub);
    } catch {
      userId = undefined;
    }
  }
  if (userId !== undefined) return { userId, canWriteAny, ...expiry };
  if (canWriteAny) return { canWriteAny, ...expiry };
  throw unauthorized(
    'invalid_token',
    `the sub claim must be a user id in decimal, 1 to ${Number.MAX_SAFE_INTEGER}`,
  );
}

function describeJoseError(error: unknown): string {
  if (error instanceof errors.JWTExpired) return 'the token has expired';
  if (error instanceof errors.JWTClaimValidationFailed) {
    if (error.claim === 'nbf') return 'the token is not valid yet';
    if (error.claim === 'iss') return 'the token issuer is not accepted';
    if (error.claim === 'aud') return 'the token audience is not accepted';
    if (error.claim === 'exp') return 'the token must have an exp claim';
    if (error.claim === 'iat') return 'the token must have a numeric iat claim';
    return `the token ${error.claim} claim is not valid`;
  }
  if (error instanceof errors.JOSEAlgNotAllowed) return 'the token algorithm is not accepted';
  if (error instanceof errors.JWSSignatureVerificationFailed) {
    return 'the token signature is not valid';
  }
  return 'the token is not valid';
}

/**
 * AUTH_MAX_TOKEN_LIFETIME_SECONDS: `exp - iat` at most that long, and `iat` not in the future (a
 * token "issued" in 2199 and expiring in 2200 would otherwise pass). jose has verified both are
 * numbers.
 */
function checkLifetime(payload: JWTPayload, maxSeconds: number, toleranceSeconds: number): void {
  const iat = payload.iat!;
  const exp = payload.exp!;
  if (iat > Date.now() / 1000 + toleranceSeconds) {
    throw unauthorized('invalid_token', 'the token iat claim is in the future');
  }
  if (exp - iat > maxSeconds) {
    throw unauthorized(
      'invalid_token',
      `the token lives longer than this server accepts (exp - iat at most ${maxSeconds} s)`,
    );
  }
}

/** The Express middleware for AUTH_MODE; apply it to the routes that need a caller. */
export function createAuthenticate(
  config: AuthConfig,
  { queryToken = false }: AuthenticateOptions = {},
): RequestHandler {
  if (config.AUTH_MODE === 'none') {
    const anyone: Principal = Object.freeze({ canWriteAny: true });
    return (_req, res, next) => {
      principalSlot.set(res, anyone);
      next();
    };
  }

  let key: Uint8Array | KeyObject;
  let algorithm: string;
  if (config.AUTH_JWT_SECRET !== undefined) {
    key = new TextEncoder().encode(config.AUTH_JWT_SECRET);
    algorithm = 'HS256';
  } else if (config.AUTH_JWT_PUBLIC_KEY !== undefined) {
    ({ key, algorithm } = config.AUTH_JWT_PUBLIC_KEY);
  } else {
    throw new Error('AUTH_MODE=jwt needs AUTH_JWT_SECRET or AUTH_JWT_PUBLIC_KEY');
  }
  const maxLifetime = config.AUTH_MAX_TOKEN_LIFETIME_SECONDS;
  const options = {
    algorithms: [algorithm],
    clockTolerance: config.AUTH_CLOCK_TOLERANCE_SECONDS,
    requiredClaims: maxLifetime === undefined ? ['exp'] : ['exp', 'iat'],
    ...(config.AUTH_JWT_ISSUER === undefined ? {} : { issuer: config.AUTH_JWT_ISSUER }),
    ...(config.AUTH_JWT_AUDIENCE === undefined ? {} : { audience: config.AUTH_JWT_AUDIENCE }),
  };

  return async (req, res, next) => {
    // The answer depends on who asks: never cached by anyone in between.
    res.set('Cache-Control', 'no-store');
    const header = req.headers.authorization;
    const inQuery: unknown = queryToken
      ? (req.query as Record<string, unknown>).access_token
      : undefined;
    let token: string | undefined;
    if (inQuery !== undefined) {
      if (header !== undefined && header !== '') {
        throw new HttpError(
          'invalid_request',
          'send the token either in the Authorization header or as access_token, not both',
        );
      }
      // The value itself never goes into a message: it may be a valid token sent by mistake.
      token =
        typeof inQuery === 'string' && inQuery.length <= MAX_TOKEN_LENGTH && JWT.test(inQuery)
          ? inQuery
          : undefined;
      if (token === undefined) {
        throw unauthorized('invalid_token', 'access_token must be one JWT');
      }
    } else {
      if (header === undefined || header === '') {
        throw unauthorized(
          'unauthorized',
          queryToken
            ? 'send Authorization: Bearer <token>, or the token as access_token'
            : 'send Authorization: Bearer <token>',
        );
      }
      token = header.length <= MAX_TOKEN_LENGTH + 16 ? BEARER.exec(header)?.[1] : undefined;
      if (token === undefined || token.length > MAX_TOKEN_LENGTH) {
        throw unauthorized('invalid_token', 'the Authorization header must be "Bearer <JWT>"');
      }
    }
    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(token, key, options));
    } catch (error) {
      throw unauthorized('invalid_token', describeJoseError(error));
    }
    if (maxLifetime !== undefined) checkLifetime(payload, maxLifetime, options.clockTolerance);
    principalSlot.set(res, principalFrom(payload));
    next();
  };
}

import { createPublicKey, type KeyObject } from 'node:crypto';
import { isIPv4, isIPv6 } from 'node:net';
import cron from 'node-cron';
import { z } from 'zod';
import { databaseNodeUrls, DatabaseUrlError } from './database-url.ts';
import { redactConnectionString } from './redact.ts';

/** Thrown when the environment does not describe a valid configuration. */
export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`Invalid configuration:\n${problems.map((p) => `  - ${p}`).join('\n')}`);
    this.name = 'ConfigError';
  }
}

type Env = Record<string, string | undefined>;

const integer = (min: number, max: number, fallback: number) =>
  z
    .string()
    .trim()
    .regex(/^-?\d+$/, 'must be a whole number')
    .transform(Number)
    .pipe(z.number().min(min, `must be at least ${min}`).max(max, `must be at most ${max}`))
    .default(fallback);

const boolean = (fallback: boolean) =>
  z
    .stringbool({ truthy: ['true', '1', 'yes', 'on'], falsy: ['false', '0', 'no', 'off'] })
    .default(fallback);

/**
 * One server, or several Citus nodes in libpq's multi-host form (lib/infra/database-url.ts): the
 * API spreads its statements over them; the other processes use the first.
 */
const databaseUrl = z
  .string({ error: 'is required (for example postgres://user:password@127.0.0.1:5432/pulse)' })
  .trim()
  .superRefine((value, ctx) => {
    try {
      databaseNodeUrls(value);
    } catch (error) {
      const problems = error instanceof DatabaseUrlError ? error.problems : [String(error)];
      for (const message of problems) ctx.addIssue({ code: 'custom', message });
    }
  });

const logLevel = z
  .enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'])
  .default('info');

const cronExpression = z
  .string()
  .trim()
  .refine((value) => cron.validate(value), 'must be a valid cron expression (5 or 6 fields)');

// --- Presence lifecycle (issue 12): the shared rules live in the database (pulse_settings) ---
// `npm run migrate` writes them when these are set (unset: leave the stored value alone); the API
// and the sweeper read them live. ONLINE_THRESHOLD_SECONDS on the API or the sweeper is only an
// assertion: a process whose value differs from the database's refuses to start, naming both.
const optionalInteger = (min: number, max: number) =>
  z
    .string()
    .trim()
    .regex(/^-?\d+$/, 'must be a whole number')
    .transform(Number)
    .pipe(z.number().min(min, `must be at least ${min}`).max(max, `must be at most ${max}`))
    .optional();

const presenceAssertions = {
  ONLINE_THRESHOLD_SECONDS: optionalInteger(1, 86_400),
};

const presenceSettings = {
  ...presenceAssertions,
  LAST_SEEN_ENABLED: z
    .stringbool({ truthy: ['true', '1', 'yes', 'on'], falsy: ['false', '0', 'no', 'off'] })
    .optional(),
  LAST_SEEN_RETENTION_DAYS: optionalInteger(1, 36_500),
  EVENT_RETENTION_DAYS: optionalInteger(1, 3_650),
};

// Log format: readable lines at a terminal, JSON lines everywhere else (lib/infra/logger.ts).
const logFormat = z
  .enum(['auto', 'json', 'pretty'], { error: 'must be "auto", "json" or "pretty"' })
  .default('auto');
/**
 * CORS_ORIGINS: the web origins whose pages may call the API from a browser, comma-separated, each
 * exactly as the browser sends it (scheme://host[:port], no path). None by default; "*" is refused:
 * an allow-list is what keeps another site's page from reading presence with a user's token.
 */
const corsOrigins = z
  .string()
  .default('')
  .transform((value, ctx) => {
    const origins: string[] = [];
    for (const raw of value.split(',')) {
      const entry = raw.trim();
      if (entry === '') continue;
      let origin: string | undefined;
      try {
        const url = new URL(entry);
        if (['http:', 'https:'].includes(url.protocol)) origin = url.origin;
      } catch {
        origin = undefined;
      }
      if (origin === undefined || origin !== entry) {
        ctx.addIssue({
          code: 'custom',
          message:
            entry === '*'
              ? 'must list exact origins: "*" is not accepted'
              : `must list exact origins like https://app.example.com (scheme, host, optional port; no path or trailing slash): "${entry}" is not one`,
        });
        return z.NEVER;
      }
      if (!origins.includes(origin)) origins.push(origin);
    }
    return Object.freeze(origins);
  });

// --- The offline detector (lib/presence/offline-detector.ts): one per database, under a lease;
// any API or sweeper process with it on may hold it.
const detectorFields = {
  OFFLINE_DETECTOR: boolean(true),
  /** Time between the holder's ticks: how late past the threshold an offline is logged, at most. */
  OFFLINE_DETECTOR_INTERVAL_MS: integer(50, 10_000, 250),
  /** A crashed holder delays offline detection at most this long (then another takes over). */
  OFFLINE_DETECTOR_LEASE_TTL_SECONDS: integer(2, 3_600, 10),
};

const common = {
  DATABASE_URL: databaseUrl,
  PG_POOL_MAX: integer(1, 1000, 10),
  /** Hot statements as named (prepared) statements; off behind PgBouncer < 1.21 in transaction mode. */
  DATABASE_PREPARED_STATEMENTS: boolean(true),
  LOG_LEVEL: logLevel,
  LOG_FORMAT: logFormat,
  ...presenceAssertions,
  SHUTDOWN_TIMEOUT_SECONDS: integer(1, 3_600, 10),
};

/** The JWT algorithm a verification public key is used with; the key alone decides it. */
export type JwtPublicKeyAlgorithm = 'RS256' | 'ES256';

/**
 * Parses AUTH_JWT_PUBLIC_KEY: a PEM public key (SPKI or PKCS#1) or X.509 certificate, RSA of at
 * least 2048 bits (RS256) or EC P-256 (ES256). Literal `\n` sequences are read as newlines, so the
 * PEM fits on one line of an env file. Throws an Error whose message completes
 * "AUTH_JWT_PUBLIC_KEY ...".
 */
export interface JwtPublicKey {
  key: KeyObject;
  algorithm: JwtPublicKeyAlgorithm;
}

export function parseJwtPublicKey(pem: string): JwtPublicKey {
  const text = pem.replaceAll('\\n', '\n').trim();
  if (/PRIVATE KEY/.test(text)) {
    throw new Error('must be a public key, not a private key (the API only verifies tokens)');
  }
  let key: KeyObject;
  try {
    key = createPublicKey(text);
  } catch {
    throw new Error('must be a PEM public key ("-----BEGIN PUBLIC KEY-----" ...)');
  }
  const details = key.asymmetricKeyDetails;
  if (key.asymmetricKeyType === 'rsa') {
    if ((details?.modulusLength ?? 0) < 2048) {
      throw new Error('must be an RSA key of at least 2048 bits');
    }
    return { key, algorithm: 'RS256' };
  }
  if (key.asymmetricKeyType === 'ec' && details?.namedCurve === 'prime256v1') {
    return { key, algorithm: 'ES256' };
  }
  throw new Error('must be an RSA (RS256) or EC P-256 (ES256) public key');
}

/** Variables whose value must never be echoed in an error message. */
const SECRET_VARIABLES = new Set(['AUTH_JWT_SECRET', 'AUTH_JWT_PUBLIC_KEY']);

const optionalText = z.string().trim().min(1, 'must not be empty').optional();

const authFields = {
  AUTH_MODE: z.enum(['none', 'jwt'], { error: 'must be "none" or "jwt"' }).default('none'),
  AUTH_JWT_SECRET: z
    .string()
    .refine(
      (value) => Buffer.byteLength(value, 'utf8') >= 32,
      'must be at least 32 bytes (for example: openssl rand -base64 48)',
    )
    .optional(),
  // Parsed here, once: the API verifies tokens with the key object, never with the PEM text.
  AUTH_JWT_PUBLIC_KEY: z
    .string()
    .transform((value, ctx) => {
      try {
        return parseJwtPublicKey(value);
      } catch (error) {
        ctx.addIssue({ code: 'custom', message: (error as Error).message });
        return z.NEVER;
      }
    })
    .optional(),
  /** The identity provider's JWKS (https, or http on a loopback host): keys fetched, cached, rotated. */
  AUTH_JWKS_URL: z
    .string()
    .trim()
    .transform((value, ctx) => {
      let url: URL | undefined;
      try {
        url = new URL(value);
      } catch {
        url = undefined;
      }
      if (
        url === undefined ||
        !(url.protocol === 'https:' || (url.protocol === 'http:' && isLoopbackHost(url.hostname)))
      ) {
        ctx.addIssue({
          code: 'custom',
          message:
            'must be an https:// URL (http:// only on a loopback host), for example https://idp.example.com/.well-known/jwks.json',
        });
        return z.NEVER;
      }
      return url;
    })
    .optional(),
  /** Keys fetched longer ago than this are fetched again (the last good ones stay in use meanwhile). */
  AUTH_JWKS_CACHE_SECONDS: integer(1, 86_400, 600),
  /** At most one fetch per this many seconds, for unknown key ids and after a failed fetch. */
  AUTH_JWKS_COOLDOWN_SECONDS: integer(0, 3_600, 30),
  AUTH_JWKS_TIMEOUT_MS: integer(100, 60_000, 5_000),
  AUTH_JWT_ISSUER: optionalText,
  AUTH_JWT_AUDIENCE: optionalText,
  AUTH_CLOCK_TOLERANCE_SECONDS: integer(0, 300, 5),
  /** Unset: any lifetime. Set: `iat` is required and `exp - iat` may not exceed it (401). */
  AUTH_MAX_TOKEN_LIFETIME_SECONDS: optionalInteger(1, 366 * 86_400),
  /** With AUTH_MODE=none set explicitly: listen on a non-loopback HOST anyway (see checkOpenApi). */
  AUTH_NONE_ALLOW_PUBLIC: boolean(false),
};

/** 127.0.0.0/8, ::1, localhost: only this machine can connect. */
export function isLoopbackHost(host: string): boolean {
  const name = host.replace(/^\[|\]$/g, '').toLowerCase();
  if (name === 'localhost' || name.endsWith('.localhost')) return true;
  if (isIPv4(name)) return name.startsWith('127.');
  if (isIPv6(name)) return name === '::1' || /^::ffff:127\./.test(name);
  return false;
}

type AuthFields = z.output<ReturnType<typeof z.object<typeof authFields>>>;

function checkAuth(c: AuthFields, ctx: z.RefinementCtx): void {
  const keySources = (['AUTH_JWT_SECRET', 'AUTH_JWT_PUBLIC_KEY', 'AUTH_JWKS_URL'] as const).filter(
    (name) => c[name] !== undefined,
  );
  if (c.AUTH_MODE === 'jwt' && keySources.length !== 1) {
    const second = keySources[1];
    ctx.addIssue({
      code: 'custom',
      path: [second ?? 'AUTH_JWT_SECRET'],
      message:
        second === undefined
          ? 'or AUTH_JWT_PUBLIC_KEY is required when AUTH_MODE=jwt, or AUTH_JWKS_URL (exactly one of them)'
          : `and ${keySources.filter((name) => name !== second).join(' and ')} are both set: set exactly one (HS256 secret, RS256/ES256 public key, or a JWKS URL)`,
    });
  }
  if (c.AUTH_MODE === 'jwt' && c.AUTH_NONE_ALLOW_PUBLIC) {
    ctx.addIssue({
      code: 'custom',
      path: ['AUTH_NONE_ALLOW_PUBLIC'],
      message: 'is set but AUTH_MODE is "jwt": it only applies to AUTH_MODE=none, unset it',
    });
  }
  if (c.AUTH_MODE === 'none') {
    // Settings for a mode that is not on are a mistake that would leave the API open: fail fast.
    const jwtOnly = [
      'AUTH_JWT_SECRET',
      'AUTH_JWT_PUBLIC_KEY',
      'AUTH_JWKS_URL',
      'AUTH_JWT_ISSUER',
      'AUTH_JWT_AUDIENCE',
      'AUTH_MAX_TOKEN_LIFETIME_SECONDS',
    ] as const;
    for (const name of jwtOnly) {
      if (c[name] !== undefined) {
        ctx.addIssue({
          code: 'custom',
          path: [name],
          message: 'is set but AUTH_MODE is "none": set AUTH_MODE=jwt, or unset it',
        });
      }
    }
  }
}

// --- Live stream (GET /status/stream), connection-held presence and change detection ---
const streamFields = {
  /** Open streams per process; one more is answered 503 too_many_streams with Retry-After. */
  STREAM_MAX_OPEN: integer(0, 1_000_000, 10_000),
  /** Open streams per caller (token sub) per process, 429 above; 0: no limit. */
  STREAM_MAX_OPEN_PER_CALLER: integer(0, 1_000_000, 16),
  /**
   * Where streams find changes: `log` tails pulse_events (cost follows the changes), `poll`
   * re-reads the watched ids every interval (the fallback; docs/stream.md). On Citus the log is
   * read node by node (lib/store/node-change-log.ts).
   */
  STREAM_CHANGE_SOURCE: z.enum(['poll', 'log'], { error: 'must be poll or log' }).default('log'),
  /** How often the watched ids are re-read (poll) or the change log is read (log). */
  STREAM_POLL_INTERVAL_MS: integer(50, 60_000, 500),
  /** A keep-alive comment at least this often (the contract promises at most 15 s of silence). */
  STREAM_KEEPALIVE_SECONDS: integer(1, 15, 15),
  /** The reconnection delay hinted in `retry:`; each stream gets it with +-50% jitter. */
  STREAM_RETRY_MS: integer(100, 600_000, 3_000),
  /** A stream whose write buffer has not drained for this long is disconnected (slow consumer). */
  STREAM_DRAIN_TIMEOUT_SECONDS: integer(1, 600, 10),
  /** ... and at once when more than this many bytes wait in the process for it. */
  STREAM_MAX_BUFFERED_BYTES: integer(16_384, 64 * 1024 * 1024, 1024 * 1024),
  /** ... and when the streams of the process together have more than this waiting. */
  STREAM_MAX_BUFFERED_BYTES_TOTAL: integer(65_536, 16 * 1024 * 1024 * 1024, 64 * 1024 * 1024),
};

const apiSchema = z
  .object({
    ...common,
    ...authFields,
    HOST: z.string().trim().min(1, 'must not be empty').default('127.0.0.1'),
    PORT: integer(0, 65_535, 3000),
    BATCH_MAX_IDS: integer(1, 100_000, 1000),
    /** Ids a caller (token sub) may read per second: POST /status/batch and stream snapshots. */
    READ_IDS_PER_SECOND_PER_CALLER: integer(0, 100_000_000, 20_000),
    BODY_LIMIT_BYTES: integer(1024, 64 * 1024 * 1024, 64 * 1024),
    HEARTBEAT_GROUP_COMMIT: boolean(true),
    STATUS_READ_COALESCING: boolean(true),
    HEARTBEAT_FLUSH_MAX_IDS: integer(1, 100_000, 2000),
    HEARTBEAT_FLUSH_DELAY_MS: integer(0, 1000, 2),
    HEARTBEAT_MAX_CONCURRENT_FLUSHES: integer(1, 100, 2),
    HEARTBEAT_QUEUE_MAX_IDS: integer(1, 10_000_000, 100_000),
    // Metrics listener: set METRICS_PORT to serve /metrics there (with /healthz, /readyz) and no
    // longer on PORT, so the public port never shows them. Unset: /metrics on PORT.
    METRICS_PORT: z
      .string()
      .trim()
      .regex(/^\d+$/, 'must be a whole number')
      .transform(Number)
      .pipe(z.number().max(65_535, 'must be at most 65535'))
      .optional(),
    METRICS_HOST: z.string().trim().min(1, 'must not be empty').default('127.0.0.1'),
    ...streamFields,
    ...detectorFields,
    // --- browser clients: cross-origin access and the demo page (client/) ---
    CORS_ORIGINS: corsOrigins,
    DEMO_PAGE: boolean(true),
    // Two full collections after an overload episode that grew the heap (needs node --expose-gc).
    HEAP_RELEASE_AFTER_OVERLOAD: boolean(true),
    // --- overload protection and slow clients (docs/overload.md) ---
    MAX_IN_FLIGHT_REQUESTS: integer(1, 100_000, 128),
    MAX_QUEUE_WAIT_MS: integer(1, 60_000, 500),
    // An admitted request's body must have arrived this long after admission (408 body_timeout),
    // and its answer be ready this long after it (503 deadline_exceeded).
    REQUEST_BODY_TIMEOUT_MS: integer(100, 600_000, 2_000),
    REQUEST_DEADLINE_MS: integer(100, 600_000, 5_000),
    HTTP_REQUEST_TIMEOUT_MS: integer(100, 3_600_000, 10_000),
    HTTP_HEADERS_TIMEOUT_MS: integer(100, 3_600_000, 5_000),
    HTTP_KEEP_ALIVE_TIMEOUT_MS: integer(100, 3_600_000, 5_000),
    HTTP_SOCKET_IDLE_TIMEOUT_MS: integer(0, 3_600_000, 30_000),
    // Above STREAM_MAX_OPEN: every open stream holds a connection, and requests need room too.
    HTTP_MAX_CONNECTIONS: integer(1, 1_000_000, 11_000),
  })
  .superRefine(checkAuth)
  .refine((c) => c.STREAM_MAX_BUFFERED_BYTES <= c.STREAM_MAX_BUFFERED_BYTES_TOTAL, {
    path: ['STREAM_MAX_BUFFERED_BYTES_TOTAL'],
    message: 'must not be below STREAM_MAX_BUFFERED_BYTES (one stream alone would exceed it)',
  })
  .refine((c) => c.HTTP_HEADERS_TIMEOUT_MS <= c.HTTP_REQUEST_TIMEOUT_MS, {
    path: ['HTTP_HEADERS_TIMEOUT_MS'],
    message: 'must not be above HTTP_REQUEST_TIMEOUT_MS (the headers are part of the request)',
  })
  .superRefine((c, ctx) => {
    if (c.HTTP_MAX_CONNECTIONS <= c.STREAM_MAX_OPEN) {
      ctx.addIssue({
        code: 'custom',
        path: ['HTTP_MAX_CONNECTIONS'],
        message: `must be above STREAM_MAX_OPEN (${c.STREAM_MAX_OPEN}): every open stream holds a connection, and requests need room too (got ${c.HTTP_MAX_CONNECTIONS})`,
      });
    }
  });

const sweeperSchema = z
  .object({
    ...common,
    SWEEP_SCHEDULE: cronExpression.default('*/10 * * * * *'),
    SWEEP_OLDER_THAN_SECONDS: integer(1, 86_400 * 30, 30),
    SWEEP_BATCH_SIZE: integer(1, 1_000_000, 10_000),
    SWEEP_LEASE_TTL_SECONDS: integer(1, 3_600, 30),
    SWEEP_BATCH_PAUSE_MS: integer(0, 60_000, 0),
    ...detectorFields,
    METRICS_PORT: integer(0, 65_535, 9464),
    METRICS_HOST: z.string().trim().min(1, 'must not be empty').default('127.0.0.1'),
  })
  .superRefine((c, ctx) => {
    if (
      c.ONLINE_THRESHOLD_SECONDS !== undefined &&
      c.SWEEP_OLDER_THAN_SECONDS < c.ONLINE_THRESHOLD_SECONDS
    ) {
      ctx.addIssue({
        code: 'custom',
        path: ['SWEEP_OLDER_THAN_SECONDS'],
        message: `must not be below ONLINE_THRESHOLD_SECONDS (${c.ONLINE_THRESHOLD_SECONDS}): the sweeper would delete users who are still online`,
      });
    }
    // The lease is renewed at the start of each batch transaction, so it must outlive a batch
    // (at most the statement timeout) plus the pause after it. Otherwise another sweeper takes
    // the lease mid-sweep and restarts from the lowest id, and high ids are never reached.
    if (c.SWEEP_BATCH_PAUSE_MS * 2 >= c.SWEEP_LEASE_TTL_SECONDS * 1000) {
      ctx.addIssue({
        code: 'custom',
        path: ['SWEEP_BATCH_PAUSE_MS'],
        message: `must be less than half of SWEEP_LEASE_TTL_SECONDS (${c.SWEEP_LEASE_TTL_SECONDS} s): the sweep lease would lapse between two batches`,
      });
    }
  });

// --- The webhook deliverer (npm run webhooks, docs/webhooks.md) ---
const webhooksSchema = z
  .object({
    ...common,
    PG_POOL_MAX: integer(1, 1000, 4),
    /** Events in one request at most. */
    WEBHOOKS_BATCH_MAX_EVENTS: integer(1, 10_000, 1000),
    /** After a read that did not fill a batch, the next read of the log waits this long. */
    WEBHOOKS_BATCH_WAIT_MS: integer(10, 60_000, 200),
    WEBHOOKS_TIMEOUT_MS: integer(100, 120_000, 10_000),
    WEBHOOKS_RESPONSE_MAX_BYTES: integer(0, 16 * 1024 * 1024, 64 * 1024),
    /** Full-jitter backoff: the n-th retry waits a random time below min(max, base * 2^(n-1)). */
    WEBHOOKS_RETRY_BASE_MS: integer(1, 600_000, 1_000),
    WEBHOOKS_RETRY_MAX_DELAY_MS: integer(1, 86_400_000, 60_000),
    /** A batch failing this long since its first attempt is parked (pulse_webhook_parked). */
    WEBHOOKS_RETRY_FOR_SECONDS: integer(1, 30 * 86_400, 86_400),
    WEBHOOKS_LEASE_TTL_SECONDS: integer(2, 3_600, 30),
    /** http:// and non-public addresses (loopback, private, link-local) as targets. */
    WEBHOOKS_ALLOW_PRIVATE_TARGETS: boolean(false),
    /** How often the endpoint list is read again (endpoints added or disabled with SQL). */
    WEBHOOKS_REFRESH_MS: integer(100, 3_600_000, 5_000),
    /** How often the backlog gauges are measured (a count over the log past each cursor). */
    WEBHOOKS_BACKLOG_INTERVAL_MS: integer(100, 3_600_000, 5_000),
    METRICS_PORT: integer(0, 65_535, 9466),
    METRICS_HOST: z.string().trim().min(1, 'must not be empty').default('127.0.0.1'),
  })
  .superRefine((c, ctx) => {
    // The lease is renewed between requests, every third of its TTL: a request must fit in the rest.
    if (c.WEBHOOKS_TIMEOUT_MS * 3 > c.WEBHOOKS_LEASE_TTL_SECONDS * 1000) {
      ctx.addIssue({
        code: 'custom',
        path: ['WEBHOOKS_TIMEOUT_MS'],
        message: `must be at most a third of WEBHOOKS_LEASE_TTL_SECONDS (${c.WEBHOOKS_LEASE_TTL_SECONDS} s): the endpoint's lease would lapse during a request`,
      });
    }
    if (c.WEBHOOKS_RETRY_BASE_MS > c.WEBHOOKS_RETRY_MAX_DELAY_MS) {
      ctx.addIssue({
        code: 'custom',
        path: ['WEBHOOKS_RETRY_BASE_MS'],
        message: `must not be above WEBHOOKS_RETRY_MAX_DELAY_MS (${c.WEBHOOKS_RETRY_MAX_DELAY_MS})`,
      });
    }
  });

const migrateSchema = z.object({
  DATABASE_URL: databaseUrl,
  LOG_LEVEL: logLevel,
  LOG_FORMAT: logFormat,
  ...presenceSettings,
  // Unset: leave the table as it is (switching rewrites the whole table under an exclusive lock).
  PULSE_TABLE_UNLOGGED: z
    .stringbool({ truthy: ['true', '1', 'yes', 'on'], falsy: ['false', '0', 'no', 'off'] })
    .optional(),
});

/** npm start: DATABASE_URL is optional there (an embedded PostgreSQL stands in). */
const startSchema = z.object({
  DATABASE_URL: databaseUrl.optional(),
  EMBEDDED_PG_PORT: integer(1, 65_535, 54_329),
  EMBEDDED_PG_DATA_DIR: z
    .string()
    .trim()
    .min(1, 'must not be empty')
    .default('.pulse-data/postgres'),
});

function parse<S extends z.ZodType>(schema: S, env: Env): Readonly<z.output<S>> {
  // An empty variable (VAR= in a shell or compose file) means "use the default".
  const present = Object.fromEntries(Object.entries(env).filter(([, value]) => value !== ''));
  const result = schema.safeParse(present);
  if (!result.success) {
    throw new ConfigError(
      result.error.issues.map((issue) => {
        const name = String(issue.path[0] ?? 'configuration');
        const raw = env[name];
        const got =
          raw === undefined
            ? ''
            : SECRET_VARIABLES.has(name)
              ? ` (got ${Buffer.byteLength(raw, 'utf8')} bytes, not shown)`
              : ` (got ${JSON.stringify(redactConnectionString(raw))})`;
        return `${name} ${issue.message}${got}`;
      }),
    );
  }
  return Object.freeze(result.data);
}

export type ApiConfig = z.output<typeof apiSchema>;

export type SweeperConfig = z.output<typeof sweeperSchema>;
export type MigrateConfig = z.output<typeof migrateSchema>;
export type WebhooksConfig = z.output<typeof webhooksSchema>;

export const loadWebhooksConfig = (env: Env): Readonly<WebhooksConfig> =>
  parse(webhooksSchema, env);

export function loadApiConfig(env: Env): Readonly<ApiConfig> {
  const config = parse(apiSchema, env);
  checkOpenApi(config, env);
  return config;
}

/**
 * Safe by default: an API without authentication listens only where nothing but this machine can
 * reach it, unless the operator asked for it twice (AUTH_MODE=none written out, and the
 * acknowledgement), so a forgotten AUTH_MODE never publishes an open API.
 */
function checkOpenApi(config: ApiConfig, env: Env): void {
  if (config.AUTH_MODE !== 'none' || isLoopbackHost(config.HOST)) return;
  if (env.AUTH_MODE?.trim() === 'none' && config.AUTH_NONE_ALLOW_PUBLIC) return;
  throw new ConfigError([
    `HOST ${JSON.stringify(config.HOST)} is not a loopback address and requests are not authenticated (AUTH_MODE=none${env.AUTH_MODE?.trim() ? '' : ', the default'}): ` +
      "anyone who can reach it could read and set anyone's status. Set AUTH_MODE=jwt with AUTH_JWT_SECRET, AUTH_JWT_PUBLIC_KEY or AUTH_JWKS_URL; " +
      'or listen on HOST=127.0.0.1; or, to run it open on purpose, set both AUTH_MODE=none and AUTH_NONE_ALLOW_PUBLIC=true',
  ]);
}
export const loadSweeperConfig = (env: Env): Readonly<SweeperConfig> =>
  parse(sweeperSchema, withLeaseTtlAlias(env));

/** SWEEP_LOCK_TTL_SECONDS is the old name of SWEEP_LEASE_TTL_SECONDS, still accepted. */
function withLeaseTtlAlias(env: Env): Env {
  const old = env.SWEEP_LOCK_TTL_SECONDS?.trim();
  if (!old) return env;
  const current = env.SWEEP_LEASE_TTL_SECONDS?.trim();
  if (current && current !== old) {
    throw new ConfigError([
      `SWEEP_LOCK_TTL_SECONDS is the old name of SWEEP_LEASE_TTL_SECONDS: set only one (got ${JSON.stringify(old)} and ${JSON.stringify(current)})`,
    ]);
  }
  return { ...env, SWEEP_LEASE_TTL_SECONDS: old };
}
export const loadMigrateConfig = (env: Env): Readonly<MigrateConfig> => parse(migrateSchema, env);
export const loadStartConfig = (env: Env): Readonly<z.output<typeof startSchema>> =>
  parse(startSchema, env);

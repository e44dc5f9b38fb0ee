import cron from 'node-cron';
import { z } from 'zod';

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
    .pipe(
      z
        .number()
        .min(min, `must be at least ${min}`)
        .max(max, `must be at most ${max}`),
    )
    .default(fallback);

const boolean = (fallback: boolean) =>
  z
    .stringbool({ truthy: ['true', '1', 'yes', 'on'], falsy: ['false', '0', 'no', 'off'] })
    .default(fallback);

const databaseUrl = z
  .string({ error: 'is required (for example postgres://user:password@127.0.0.1:5432/pulse)' })
  .trim()
  .refine((value) => {
    try {
      return ['postgres:', 'postgresql:'].includes(new URL(value).protocol);
    } catch {
      return false;
    }
  }, 'must be a postgres:// or postgresql:// URL');

const logLevel = z
  .enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'])
  .default('info');

const cronExpression = z
  .string()
  .trim()
  .refine((value) => cron.validate(value), 'must be a valid cron expression (5 or 6 fields)');

const common = {
  DATABASE_URL: databaseUrl,
  PG_POOL_MAX: integer(1, 1000, 10),
  LOG_LEVEL: logLevel,
  ONLINE_THRESHOLD_SECONDS: integer(1, 86_400, 20),
  SHUTDOWN_TIMEOUT_SECONDS: integer(1, 3_600, 10),
};

const apiSchema = z.object({
  ...common,
  HOST: z.string().trim().min(1, 'must not be empty').default('127.0.0.1'),
  PORT: integer(0, 65_535, 3000),
  BATCH_MAX_IDS: integer(1, 100_000, 1000),
  BODY_LIMIT_BYTES: integer(1024, 64 * 1024 * 1024, 64 * 1024),
  HEARTBEAT_GROUP_COMMIT: boolean(true),
  HEARTBEAT_FLUSH_MAX_IDS: integer(1, 100_000, 2000),
  HEARTBEAT_FLUSH_DELAY_MS: integer(0, 1000, 2),
  HEARTBEAT_MAX_CONCURRENT_FLUSHES: integer(1, 100, 2),
  HEARTBEAT_QUEUE_MAX_IDS: integer(1, 10_000_000, 100_000),
});

const sweeperSchema = z
  .object({
    ...common,
    SWEEP_SCHEDULE: cronExpression.default('*/10 * * * * *'),
    SWEEP_OLDER_THAN_SECONDS: integer(1, 86_400 * 30, 30),
    SWEEP_BATCH_SIZE: integer(1, 1_000_000, 10_000),
    SWEEP_LOCK_TTL_SECONDS: integer(1, 3_600, 30),
    SWEEP_BATCH_PAUSE_MS: integer(0, 60_000, 0),
    METRICS_PORT: integer(0, 65_535, 9464),
    METRICS_HOST: z.string().trim().min(1, 'must not be empty').default('127.0.0.1'),
  })
  .refine((c) => c.SWEEP_OLDER_THAN_SECONDS >= c.ONLINE_THRESHOLD_SECONDS, {
    path: ['SWEEP_OLDER_THAN_SECONDS'],
    message:
      'must not be below ONLINE_THRESHOLD_SECONDS (the sweeper would delete users who are still online)',
  });

const migrateSchema = z.object({
  DATABASE_URL: databaseUrl,
  LOG_LEVEL: logLevel,
  PULSE_TABLE_UNLOGGED: boolean(false),
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
        const got = raw === undefined ? '' : ` (got ${JSON.stringify(raw)})`;
        return `${name} ${issue.message}${got}`;
      }),
    );
  }
  return Object.freeze(result.data);
}

export type ApiConfig = z.output<typeof apiSchema>;
export type SweeperConfig = z.output<typeof sweeperSchema>;
export type MigrateConfig = z.output<typeof migrateSchema>;

export const loadApiConfig = (env: Env): Readonly<ApiConfig> => parse(apiSchema, env);
export const loadSweeperConfig = (env: Env): Readonly<SweeperConfig> => parse(sweeperSchema, env);
export const loadMigrateConfig = (env: Env): Readonly<MigrateConfig> => parse(migrateSchema, env);

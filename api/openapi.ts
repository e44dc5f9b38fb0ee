/** The OpenAPI 3.1 contract of the API, served at GET /openapi.json and checked by the tests. */

const errorCodes = [
  'invalid_user_id',
  'invalid_body',
  'invalid_json',
  'invalid_path',
  'unauthorized',
  'invalid_token',
  'forbidden',
  'request_aborted',
  'too_many_ids',
  'payload_too_large',
  'unsupported_media_type',
  'not_found',
  'not_ready',
  'queue_full',
  'write_failed',
  'shutting_down',
  'database_unavailable',
  'internal_error',
] as const;

const json = (schema: object) => ({ 'application/json': { schema } });
const ref = (name: string) => ({ $ref: `#/components/schemas/${name}` });
const error = (description: string) => ({ description, content: json(ref('Error')) });
const retryAfter = {
  'Retry-After': { description: 'Seconds to wait before retrying', schema: { type: 'string' } },
};
const unavailable = {
  description:
    'Not written or not answered: the database is unavailable (`database_unavailable`), the heartbeat queue is full (`queue_full`), the write failed (`write_failed`) or the server is stopping (`shutting_down`). Retry after `Retry-After` seconds.',
  headers: retryAfter,
  content: json(ref('Error')),
};
const badRequest = error('`invalid_user_id`, `invalid_body` or `invalid_json`');
const tooLarge = error(
  '`too_many_ids` (more than BATCH_MAX_IDS) or `payload_too_large` (over BODY_LIMIT_BYTES)',
);
const wrongType = error('`unsupported_media_type`: the body must be application/json');
const wwwAuthenticate = {
  'WWW-Authenticate': { description: 'Bearer challenge (RFC 6750)', schema: { type: 'string' } },
};
const unauthenticated = {
  description:
    'AUTH_MODE=jwt only: no bearer token (`unauthorized`) or a token that is not valid (`invalid_token`)',
  headers: wwwAuthenticate,
  content: json(ref('Error')),
};
const forbidden = {
  description:
    "AUTH_MODE=jwt only: `forbidden`, a heartbeat for a user other than the token's `sub` without the `presence:write:any` scope",
  headers: wwwAuthenticate,
  content: json(ref('Error')),
};
/** What every /status operation can also answer. */
const secured = {
  security: [{ bearerAuth: [] }, {}],
};

export const openApiDocument = {
  openapi: '3.1.0',
  info: {
    title: 'Pulse',
    version: '1.0.0',
    description:
      'Online/offline presence on PostgreSQL. A user is online when their last heartbeat is within the online threshold (pulse_settings.online_threshold_seconds, 20 s by default) of the database clock. Unknown fields in request bodies are ignored.',
  },
  paths: {
    '/status/update': {
      post: {
        operationId: 'sendHeartbeat',
        ...secured,
        summary: 'Record a heartbeat for one user, or for many users (gateway form)',
        requestBody: {
          required: true,
          content: json({ oneOf: [ref('UserRef'), { type: 'array', items: ref('UserRef') }] }),
        },
        responses: {
          '200': {
            description: 'Committed to the database',
            content: json({
              oneOf: [
                {
                  type: 'object',
                  required: ['status'],
                  additionalProperties: false,
                  properties: { status: { const: 'success' } },
                },
                {
                  type: 'object',
                  required: ['status', 'accepted'],
                  additionalProperties: false,
                  properties: {
                    status: { const: 'success' },
                    accepted: { type: 'integer', minimum: 0 },
                  },
                },
              ],
            }),
          },
          '400': badRequest,
          '401': unauthenticated,
          '403': forbidden,
          '413': tooLarge,
          '415': wrongType,
          '503': unavailable,
        },
      },
    },
    '/status/{user_id}': {
      get: {
        operationId: 'getStatus',
        ...secured,
        summary: 'Whether one user is online, and when they were last seen',
        parameters: [
          {
            name: 'user_id',
            in: 'path',
            required: true,
            schema: { type: 'string', pattern: '^[1-9][0-9]{0,15}$' },
          },
        ],
        responses: {
          '200': {
            description: 'The user and whether they are online',
            content: json(ref('Status')),
          },
          '400': error('`invalid_user_id`, or `invalid_path` for broken percent-encoding'),
          '401': unauthenticated,
          '503': unavailable,
        },
      },
    },
    '/status/batch': {
      post: {
        operationId: 'getStatuses',
        ...secured,
        summary:
          'Whether each of many users is online, in request order (duplicates answered as given)',
        requestBody: { required: true, content: json({ type: 'array', items: ref('UserRef') }) },
        responses: {
          '200': {
            description: 'One entry per requested id',
            content: json({ type: 'array', items: ref('Status') }),
          },
          '400': badRequest,
          '401': unauthenticated,
          '413': tooLarge,
          '415': wrongType,
          '503': unavailable,
        },
      },
    },
    '/healthz': {
      get: {
        operationId: 'health',
        summary: 'Liveness: the process is running',
        responses: {
          '200': {
            description: 'Alive',
            content: json({
              type: 'object',
              required: ['status'],
              properties: { status: { const: 'ok' } },
            }),
          },
        },
      },
    },
    '/readyz': {
      get: {
        operationId: 'ready',
        summary: 'Readiness: the database answers and every migration is applied',
        responses: {
          '200': {
            description: 'Ready',
            content: json({
              type: 'object',
              required: ['status'],
              properties: { status: { const: 'ready' } },
            }),
          },
          '503': error('`not_ready`, with the reason as the message'),
        },
      },
    },
    '/metrics': {
      get: {
        operationId: 'metrics',
        summary: 'Prometheus metrics (text exposition format)',
        responses: {
          '200': {
            description: 'Metrics',
            content: { 'text/plain': { schema: { type: 'string' } } },
          },
        },
      },
    },
    '/openapi.json': {
      get: {
        operationId: 'openapi',
        summary: 'This document',
        responses: {
          '200': { description: 'OpenAPI 3.1 document', content: json({ type: 'object' }) },
        },
      },
    },
  },
  components: {
    securitySchemes: {
      bearerAuth: {
        type: 'http',
        scheme: 'bearer',
        bearerFormat: 'JWT',
        description:
          'With AUTH_MODE=jwt: `sub` is the user id; the `presence:write:any` scope lets a gateway send heartbeats for any user. With AUTH_MODE=none no token is needed.',
      },
    },
    schemas: {
      UserId: { type: 'integer', minimum: 1, maximum: Number.MAX_SAFE_INTEGER },
      UserRef: {
        type: 'object',
        required: ['user_id'],
        properties: {
          user_id: ref('UserId'),
          timestamp: {
            description: 'Accepted and ignored: last_hb always comes from the database clock',
          },
        },
      },
      Status: {
        type: 'object',
        required: ['user_id', 'is_online', 'last_seen'],
        additionalProperties: false,
        properties: {
          user_id: ref('UserId'),
          is_online: {
            type: 'boolean',
            description:
              'Last heartbeat within pulse_settings.online_threshold_seconds of the database clock',
          },
          last_seen: {
            type: ['string', 'null'],
            format: 'date-time',
            description:
              'When the user was last around, by the database clock (ISO 8601, UTC): their last heartbeat while Pulse holds a presence row (so for every online user), else the last heartbeat recorded when they went offline (sweep or explicit offline, kept for pulse_settings.last_seen_retention_days), else null (unknown, or last seen is off)',
          },
        },
      },
      Error: {
        type: 'object',
        required: ['error'],
        additionalProperties: false,
        properties: {
          error: {
            type: 'object',
            required: ['code', 'message'],
            additionalProperties: false,
            properties: { code: { enum: [...errorCodes] }, message: { type: 'string' } },
          },
        },
      },
    },
  },
};

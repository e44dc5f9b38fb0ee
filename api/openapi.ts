/** The OpenAPI 3.1 contract of the API, served at GET /openapi.json and checked by the tests. */
import { errorCodes } from '../http/error-catalogue.ts';

const json = (schema: object) => ({ 'application/json': { schema } });
const ref = (name: string) => ({ $ref: `#/components/schemas/${name}` });
const error = (description: string) => ({ description, content: json(ref('Error')) });
const retryAfter = {
  'Retry-After': { description: 'Seconds to wait before retrying', schema: { type: 'string' } },
};
const unavailable = {
  description:
    "Not written or not answered: the identity provider's keys cannot be fetched (`auth_unavailable`, AUTH_JWKS_URL), the process is overloaded (`overloaded`), the answer was not ready REQUEST_DEADLINE_MS after admission (`deadline_exceeded`), the database is unavailable (`database_unavailable`), the shared settings row is missing (`settings_missing`, reads), the heartbeat queue is full (`queue_full`), the write failed (`write_failed`) or the server is stopping (`shutting_down`). Retry after `Retry-After` seconds.",
  headers: retryAfter,
  content: json(ref('Error')),
};
/** Per-caller limits (api/edge/caller-limits.ts), AUTH_MODE=jwt only. */
const callerLimit = (code: string, limit: string) => ({
  description: `AUTH_MODE=jwt only: \`${code}\`, this caller (token \`sub\`) is at ${limit}. Retry after \`Retry-After\` seconds.`,
  headers: retryAfter,
  content: json(ref('Error')),
});
const badRequest = error(
  '`invalid_user_id`, `invalid_device` (device_id or device_kind), `invalid_body` or `invalid_json`',
);
const tooLarge = error(
  '`too_many_ids` (more than BATCH_MAX_IDS) or `payload_too_large` (over BODY_LIMIT_BYTES)',
);
const wrongType = error('`unsupported_media_type`: the body must be application/json');
const slowBody = error(
  '`body_timeout`: the body did not arrive within REQUEST_BODY_TIMEOUT_MS of admission; the connection is closed',
);
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
/** Probes, metrics and this document: no token, whatever AUTH_MODE says. */
const open = { security: [] };
/** Node's HTTP server answers any request this way, before Pulse sees it. */
const headersTooLarge = {
  description: 'Request headers over 16 KB (the Node.js HTTP server limit); no body',
};

export const openApiDocument = {
  openapi: '3.1.0',
  info: {
    title: 'Pulse',
    version: '1.0.0',
    // No open-source licence: a private package. LicenseRef- is SPDX's form for such a licence.
    license: { name: 'Proprietary', identifier: 'LicenseRef-Proprietary' },
    description:
      "Online/offline presence on PostgreSQL. A user is online when their last heartbeat is within the online threshold (pulse_settings.online_threshold_seconds, 20 s by default) of the database clock. Unknown fields in request bodies are ignored. Every status answer and stream event applies each user's privacy (invisible, hidden last seen) and, when the operator installed it, the visibility rule pulse_visible_users: a user the caller may not see reads exactly like an unknown offline user (is_online false, last_seen null).",
  },
  // Relative: the API serves this document itself, so its own origin is the server.
  servers: [{ url: '/', description: 'The API serving this document' }],
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
            headers: {
              'Pulse-Online-Threshold-Seconds': {
                description:
                  "The online threshold (pulse_settings, read again at most once a second): a client's fallback heartbeat loop beats at about half of it.",
                schema: { type: 'integer', minimum: 1 },
              },
            },
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
          '408': slowBody,
          '503': unavailable,
        },
      },
    },
    '/status/offline': {
      post: {
        operationId: 'setOffline',
        ...secured,
        summary:
          'Explicit offline: the users are offline for every reader at once and every watcher gets a change (a later heartbeat brings them back)',
        parameters: [
          {
            name: 'grace_ms',
            in: 'query',
            required: false,
            description:
              'Offline after this many ms unless the user sends a heartbeat meanwhile (what a page sends as it goes away: a reload opens a stream, which beats, and cancels it). Answered 202 at once. 0 or absent: at once.',
            schema: { type: 'integer', minimum: 0, maximum: 10000 },
          },
        ],
        requestBody: {
          required: true,
          content: json({ oneOf: [ref('UserRef'), { type: 'array', items: ref('UserRef') }] }),
        },
        responses: {
          '202': {
            description: 'With grace_ms: the users go offline after it unless they beat meanwhile',
            content: json({
              type: 'object',
              required: ['status'],
              additionalProperties: false,
              properties: {
                status: { const: 'accepted' },
                accepted: { type: 'integer', minimum: 0 },
              },
            }),
          },
          '200': {
            description: 'Committed: the users are offline',
            content: json({
              type: 'object',
              required: ['status'],
              additionalProperties: false,
              properties: {
                status: { const: 'success' },
                accepted: { type: 'integer', minimum: 0 },
              },
            }),
          },
          '400': badRequest,
          '401': unauthenticated,
          '403': forbidden,
          '413': tooLarge,
          '415': wrongType,
          '408': slowBody,
          '503': unavailable,
        },
      },
    },
    '/status/stream': {
      get: {
        operationId: 'streamStatuses',
        security: [{ bearerAuth: [] }, { accessToken: [] }, {}],
        summary:
          'Server-Sent Events: a snapshot of the watched users, then one change per online/offline transition; keeps the caller online while open',
        description:
          'Events: `snapshot` (data: the array POST /status/batch returns for `watch`), then `change` (data: one Status: user_id, is_online, last_seen) per transition, by the database clock, whichever replica wrote. A `retry:` hint (ms) comes first and again when the server ends the stream (shutdown, token expiry); a keep-alive comment at least every 15 s. A reconnecting client gets a fresh snapshot (no replay). Held presence, only with `hold=true`: `user_id` if given (with AUTH_MODE=jwt only the token `sub` or with the gateway scope), else the token `sub`, is kept online while the stream is open; without `hold=true` the stream only watches, whatever the token.',
        parameters: [
          {
            name: 'watch',
            in: 'query',
            required: false,
            description: 'User ids to follow, comma-separated, at most BATCH_MAX_IDS',
            schema: { type: 'string', pattern: '^([1-9][0-9]{0,15}(,[1-9][0-9]{0,15})*)?$' },
          },
          {
            name: 'hold',
            in: 'query',
            required: false,
            description:
              '`true`: hold presence while the stream is open (`user_id`, else the token `sub`; 400 `invalid_request` when there is neither). `false` or absent: only watch',
            schema: { type: 'string', enum: ['true', 'false'] },
          },
          {
            name: 'user_id',
            in: 'query',
            required: false,
            description:
              'Whose presence a `hold=true` stream holds (AUTH_MODE=none, or a gateway token); without `hold=true`, 400 `invalid_request`',
            schema: { type: 'string', pattern: '^[1-9][0-9]{0,15}$' },
          },
          {
            name: 'device_id',
            in: 'query',
            required: false,
            description:
              'With `hold=true`: the device the stream holds presence from (an id the client keeps per device). The user is online while any of their devices is; without it, the unnamed device of requests naming none. Without `hold=true`, 400 `invalid_request`',
            schema: ref('DeviceId'),
          },
          {
            name: 'device_kind',
            in: 'query',
            required: false,
            description: 'With `hold=true`: what kind of client the device is',
            schema: ref('DeviceKind'),
          },
          {
            name: 'access_token',
            in: 'query',
            required: false,
            description:
              'The bearer token, for EventSource which cannot send headers (RFC 6750 section 2.3); never together with the Authorization header. Never logged.',
            schema: { type: 'string' },
          },
        ],
        responses: {
          '200': {
            description: 'The event stream',
            content: {
              'text/event-stream': {
                schema: { type: 'string' },
                // Each event's shape. OpenAPI 3.2 names this `itemSchema`; this is a 3.1 document,
                // where only an extension may carry it (Redocly's recommended rules refuse the bare key).
                'x-itemSchema': {
                  oneOf: [
                    {
                      type: 'object',
                      properties: {
                        event: { const: 'snapshot' },
                        data: { type: 'array', items: ref('Status') },
                      },
                    },
                    {
                      type: 'object',
                      properties: { event: { const: 'change' }, data: ref('Status') },
                    },
                  ],
                },
              },
            },
          },
          '400': error(
            '`invalid_user_id` (watch or user_id), `invalid_device` (device_id or device_kind), or `invalid_request` (a token in both the header and the query, or a device without hold=true)',
          ),
          '401': unauthenticated,
          '403': forbidden,
          '413': error('`too_many_ids`: more than BATCH_MAX_IDS watched ids'),
          '429': callerLimit(
            'too_many_streams_per_caller` or `too_many_reads_per_caller',
            'STREAM_MAX_OPEN_PER_CALLER open streams, or its READ_IDS_PER_SECOND_PER_CALLER budget (the snapshot reads the watched ids)',
          ),
          '503': {
            description:
              '`auth_unavailable` (AUTH_JWKS_URL unreachable and the token key unknown), `overloaded` (admission control, the snapshot weighed as a batch read of the watched ids), `too_many_streams` (STREAM_MAX_OPEN reached), `deadline_exceeded` (first held heartbeat and snapshot not done within REQUEST_DEADLINE_MS), `shutting_down`, or the database or heartbeat queue unavailable for the first held heartbeat or the snapshot. Retry after `Retry-After` seconds.',
            headers: retryAfter,
            content: json(ref('Error')),
          },
        },
      },
    },
    '/status/privacy': {
      get: {
        operationId: 'getPrivacy',
        ...secured,
        summary: "The caller's own invisible mode and hidden last seen",
        parameters: [
          {
            name: 'user_id',
            in: 'query',
            required: false,
            description:
              "Whose settings: the token's `sub` by default; another user only with the `presence:write:any` scope; required with AUTH_MODE=none",
            schema: { type: 'string', pattern: '^[1-9][0-9]{0,15}$' },
          },
        ],
        responses: {
          '200': { description: 'The settings', content: json(ref('Privacy')) },
          '400': error('`invalid_user_id`: no user id (a caller that is not a user must name one)'),
          '401': unauthenticated,
          '403': forbidden,
          '503': unavailable,
        },
      },
      put: {
        operationId: 'setPrivacy',
        ...secured,
        summary:
          'Invisible mode (read as offline by everyone, last seen frozen) and hidden last seen (null for everyone); applied to every answer and stream event',
        requestBody: {
          required: true,
          content: json({
            type: 'object',
            minProperties: 1,
            properties: {
              user_id: { ...ref('UserId'), description: "Default: the token's `sub`" },
              invisible: { type: 'boolean' },
              hide_last_seen: { type: 'boolean' },
            },
          }),
        },
        responses: {
          '200': { description: 'Stored; the settings now', content: json(ref('Privacy')) },
          '400': badRequest,
          '401': unauthenticated,
          '403': forbidden,
          '413': tooLarge,
          '415': wrongType,
          '408': slowBody,
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
          '429': callerLimit(
            'too_many_reads_per_caller',
            'READ_IDS_PER_SECOND_PER_CALLER (one id per request)',
          ),
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
          '429': callerLimit('too_many_reads_per_caller', 'READ_IDS_PER_SECOND_PER_CALLER'),
          '413': tooLarge,
          '415': wrongType,
          '408': slowBody,
          '503': unavailable,
        },
      },
    },
    '/healthz': {
      get: {
        operationId: 'health',
        ...open,
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
          '431': headersTooLarge,
        },
      },
    },
    '/readyz': {
      get: {
        operationId: 'ready',
        ...open,
        summary: 'Readiness: the database answers and every migration is applied',
        responses: {
          '200': {
            description: 'Ready',
            content: json({
              type: 'object',
              required: ['status'],
              properties: {
                status: { const: 'ready' },
                nodes: {
                  description:
                    'Only when DATABASE_URL lists several Citus nodes: each node (`host:port`) and its readiness. The API is ready while at least one node is.',
                  type: 'array',
                  items: {
                    type: 'object',
                    required: ['node', 'status'],
                    properties: {
                      node: { type: 'string' },
                      status: { enum: ['ready', 'not_ready'] },
                      reason: { type: 'string' },
                    },
                  },
                },
              },
            }),
          },
          '431': headersTooLarge,
          '503': error('`not_ready`, with the reason as the message'),
        },
      },
    },
    '/metrics': {
      get: {
        operationId: 'metrics',
        ...open,
        summary: 'Prometheus metrics (text exposition format)',
        responses: {
          '200': {
            description: 'Metrics',
            content: { 'text/plain': { schema: { type: 'string' } } },
          },
          '404': error(
            '`not_found`: with METRICS_PORT set, /metrics is served on that port only, not on the API port',
          ),
          '431': headersTooLarge,
        },
      },
    },
    '/openapi.json': {
      get: {
        operationId: 'openapi',
        ...open,
        summary: 'This document',
        responses: {
          '200': { description: 'OpenAPI 3.1 document', content: json({ type: 'object' }) },
          '431': headersTooLarge,
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
      accessToken: {
        type: 'apiKey',
        in: 'query',
        name: 'access_token',
        description: 'The same JWT as bearerAuth, on GET /status/stream only',
      },
    },
    schemas: {
      UserId: { type: 'integer', minimum: 1, maximum: Number.MAX_SAFE_INTEGER },
      DeviceId: {
        type: 'string',
        pattern: '^[A-Za-z0-9._:-]{1,64}$',
        description:
          'An opaque id the client keeps per device (a browser: shared by its tabs). Presence is per device, decided per user: online while any device is.',
      },
      DeviceKind: { type: 'string', enum: ['web', 'mobile', 'desktop', 'other'] },
      DeviceSummary: {
        type: 'object',
        required: ['count', 'kinds'],
        additionalProperties: false,
        description:
          'Where the user is online: their devices with a beat within the threshold, and the kinds those devices named (sorted, distinct). Count 0 and no kinds when offline, or hidden by privacy or the visibility rule. A change of devices with no online/offline transition sends no stream event.',
        properties: {
          count: { type: 'integer', minimum: 0 },
          kinds: { type: 'array', items: ref('DeviceKind'), uniqueItems: true },
        },
      },
      UserRef: {
        type: 'object',
        required: ['user_id'],
        properties: {
          user_id: ref('UserId'),
          device_id: {
            ...ref('DeviceId'),
            description:
              'Heartbeat and offline: the device it comes from. An offline naming a device ends only that device (the user goes offline when no other device is fresh); without one it ends the user everywhere. Ignored by POST /status/batch.',
          },
          device_kind: {
            ...ref('DeviceKind'),
            description: 'Heartbeat: what kind of client the device is. Ignored elsewhere.',
          },
          timestamp: {
            description: 'Accepted and ignored: last_hb always comes from the database clock',
          },
        },
      },
      Status: {
        type: 'object',
        required: ['user_id', 'is_online', 'last_seen', 'devices'],
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
          devices: ref('DeviceSummary'),
        },
      },
      Privacy: {
        type: 'object',
        required: ['user_id', 'invisible', 'hide_last_seen'],
        additionalProperties: false,
        properties: {
          user_id: ref('UserId'),
          invisible: {
            type: 'boolean',
            description:
              'Read as offline by everyone (heartbeats and streams go on); last seen no later than when they turned invisible',
          },
          hide_last_seen: { type: 'boolean', description: 'last_seen is null in every answer' },
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

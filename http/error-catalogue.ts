/**
 * Every error code Pulse answers with: its HTTP status, its default message, and when it is sent.
 * The handlers throw by code (api/edge/errors.ts), the OpenAPI document lists these codes
 * (api/openapi.ts), and docs/api.md's error table is rendered from here (`npm run docs:errors`,
 * checked by test/openapi.test.ts).
 */
export interface ErrorEntry {
  status: number;
  /** The message when the thrower gives none. */
  message: string;
  /** When it is sent: one line for docs/api.md. */
  when: string;
}

export const errorCatalogue = {
  invalid_user_id: {
    status: 400,
    message: 'the user id is not valid',
    when: '`user_id` missing, not an integer, below 1 or above 2^53 - 1 (body, path or `watch`)',
  },
  invalid_device: {
    status: 400,
    message: 'the device is not valid',
    when: "`device_id` not 1 to 64 characters of `A-Z a-z 0-9 . _ : -`, or `device_kind` not one of `web`, `mobile`, `desktop`, `other` (body, or the stream's query)",
  },
  invalid_body: {
    status: 400,
    message: 'the request body has the wrong shape',
    when: 'the body has the wrong shape (an object where an array belongs, items that are not objects, ...), or its size does not match its `Content-Length`',
  },
  invalid_json: {
    status: 400,
    message: 'the request body is not valid JSON',
    when: 'the body is not valid JSON',
  },
  invalid_path: {
    status: 400,
    message: 'the request path is not valid percent-encoding',
    when: 'the path is not valid percent-encoding',
  },
  invalid_request: {
    status: 400,
    message: 'send the token either in the Authorization header or as access_token, not both',
    when: '`GET /status/stream` with a token both in the header and as `access_token`; `POST /status/offline` with a `grace_ms` that is not an integer from 0 to 10000',
  },
  request_aborted: {
    status: 400,
    message: 'the request was aborted by the client',
    when: 'the client went away while sending the body (logged; the client is no longer there to read it)',
  },
  body_timeout: {
    status: 408,
    message: 'the request body did not arrive in time',
    when: 'the body did not arrive within `REQUEST_BODY_TIMEOUT_MS` of admission; the connection is closed ([overload.md](overload.md))',
  },
  unauthorized: {
    status: 401,
    message: 'a bearer token is required',
    when: '`AUTH_MODE=jwt` and no bearer token (with `WWW-Authenticate`)',
  },
  invalid_token: {
    status: 401,
    message: 'the bearer token is not valid',
    when: '`AUTH_MODE=jwt` and the token is not valid: signature, expiry, issuer, audience, claims',
  },
  forbidden: {
    status: 403,
    message: 'this token may not do that',
    when: '`AUTH_MODE=jwt`: a heartbeat or offline for another user without the gateway scope',
  },
  too_many_streams_per_caller: {
    status: 429,
    message: 'this caller has as many streams open as it may, close one or retry later',
    when: '`GET /status/stream`: the caller (token `sub`) already has `STREAM_MAX_OPEN_PER_CALLER` streams open on this process; with `Retry-After`',
  },
  too_many_reads_per_caller: {
    status: 429,
    message: 'this caller has read too many ids, retry later',
    when: '`POST /status/batch`, `GET /status/{id}` (one id) or a stream snapshot: the caller (token `sub`) has used its `READ_IDS_PER_SECOND_PER_CALLER` budget; with `Retry-After`',
  },
  not_found: {
    status: 404,
    message: 'no such route',
    when: 'no such route',
  },
  too_many_ids: {
    status: 413,
    message: 'too many user ids in one request',
    when: 'more than `BATCH_MAX_IDS` items in one request (or ids in `watch`)',
  },
  payload_too_large: {
    status: 413,
    message: 'the request body is too large',
    when: 'body over `BODY_LIMIT_BYTES`',
  },
  unsupported_media_type: {
    status: 415,
    message: 'send the body as application/json',
    when: 'the body is not `application/json`, or its encoding or charset is not supported',
  },
  auth_unavailable: {
    status: 503,
    message: "the identity provider's keys cannot be fetched, retry later",
    when: "`AUTH_JWKS_URL`: the token's key is not among the last keys fetched and the JWKS endpoint cannot be reached (or nothing was fetched yet); the token is not accepted",
  },
  database_unavailable: {
    status: 503,
    message: 'the database is unavailable, retry later',
    when: 'PostgreSQL cannot be reached; the process stays up and recovers by itself',
  },
  settings_missing: {
    status: 503,
    message:
      'the shared settings row is missing: nobody can be told online until npm run migrate restores it',
    when: 'a read (`GET /status/{id}`, `POST /status/batch`, a stream snapshot) while `pulse_settings` has no row: without its threshold every user would read offline, so the read is refused; `/readyz` is not ready meanwhile and the API logs it (at most once a minute)',
  },
  overloaded: {
    status: 503,
    message: 'the server is overloaded, retry later',
    when: 'the process is at `MAX_IN_FLIGHT_REQUESTS`, or its queues wait longer than `MAX_QUEUE_WAIT_MS`; refused before the body is read (or, if the body read leaves no room for it, before it is parsed), with `Retry-After: 1` (doubling, up to 4, for a connection that keeps coming back before it is up) ([overload.md](overload.md)); `GET /status/stream` too, for its snapshot',
  },
  deadline_exceeded: {
    status: 503,
    message: 'the request could not be answered in time, retry later',
    when: 'no answer `REQUEST_DEADLINE_MS` after admission (a table lock, a stuck statement); a heartbeat answered so is not acknowledged, though it may still be written',
  },
  queue_full: {
    status: 503,
    message: 'too many heartbeats are waiting to be written, retry later',
    when: 'too many heartbeats are waiting to be written (backpressure); retry after `Retry-After`',
  },
  write_failed: {
    status: 503,
    message: 'the heartbeat was not written, retry later',
    when: 'the statement holding this heartbeat failed; nothing of it was written',
  },
  shutting_down: {
    status: 503,
    message: 'the server is shutting down',
    when: 'the process is stopping',
  },
  too_many_streams: {
    status: 503,
    message: 'this server holds as many streams as it may, retry later',
    when: '`GET /status/stream`: `STREAM_MAX_OPEN` streams are open on this process',
  },
  not_ready: {
    status: 503,
    message: 'not ready',
    when: 'from `/readyz` only: database down or not answering within 2 s, `pulse` locked against writes, migrations pending, a table or the `pulse_settings` row missing',
  },
  client_not_built: {
    status: 503,
    message: 'the demo page needs the built client library: run npm run build:client',
    when: '`/demo` or `/client` on a checkout whose client library was not built',
  },
  internal_error: {
    status: 500,
    message: 'internal error',
    when: 'a bug: logged once with its cause; the answer says nothing more',
  },
} as const satisfies Record<string, ErrorEntry>;

export type ErrorCode = keyof typeof errorCatalogue;

export const errorCodes = Object.keys(errorCatalogue) as ErrorCode[];

/** The JSON body of every error answer. */
export interface ErrorBody {
  error: { code: ErrorCode; message: string };
}

export function errorBody(
  code: ErrorCode,
  message: string = errorCatalogue[code].message,
): ErrorBody {
  return { error: { code, message } };
}

/** docs/api.md's error table, in catalogue order. */
export function errorTable(): string {
  const rows = Object.entries(errorCatalogue).map(
    ([code, entry]) => `| ${entry.status} | \`${code}\` | ${entry.when} |`,
  );
  return ['| status | code | when |', '|---|---|---|', ...rows].join('\n');
}

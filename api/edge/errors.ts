import type { ErrorRequestHandler, RequestHandler } from 'express';
import { requestLoggerOf } from './request-log.ts';
import { isDatabaseUnavailable } from '../../lib/infra/db.ts';
import { SettingsMissingError } from '../../lib/store/pulse-store.ts';
import {
  errorBody,
  errorCatalogue,
  type ErrorBody,
  type ErrorCode,
} from '../../http/error-catalogue.ts';

export type { ErrorBody, ErrorCode };

/** An error answered as JSON with its catalogued status and code (http/error-catalogue.ts). */
export class HttpError extends Error {
  readonly status: number;
  constructor(
    readonly code: ErrorCode,
    message: string = errorCatalogue[code].message,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
    this.name = 'HttpError';
    this.status = errorCatalogue[code].status;
  }
}

/** body-parser's error types and the code each is answered with. */
const bodyParserErrors: Record<string, [ErrorCode, string]> = {
  'entity.parse.failed': ['invalid_json', 'the request body is not valid JSON'],
  'entity.too.large': ['payload_too_large', 'the request body is too large'],
  'encoding.unsupported': ['unsupported_media_type', 'the content encoding is not supported'],
  'charset.unsupported': ['unsupported_media_type', 'the charset is not supported'],
  'request.aborted': ['request_aborted', 'the request was aborted by the client'],
  'request.size.invalid': ['invalid_body', 'the request body size does not match its length'],
};

/** Maps anything thrown while serving a request to the HttpError it is answered with. */
export function toHttpError(error: unknown): HttpError {
  // First: a rejected heartbeat whose cause is an unreachable database is an outage, not a failure.
  if (isDatabaseUnavailable(error)) {
    return new HttpError('database_unavailable', undefined, { 'Retry-After': '1' });
  }
  if (error instanceof HttpError) return error;
  if (error instanceof SettingsMissingError) {
    return new HttpError('settings_missing', undefined, { 'Retry-After': '5' });
  }
  // A path with broken percent-encoding (the router fails to decode a parameter).
  if (error instanceof URIError) return new HttpError('invalid_path');
  const type = (error as { type?: unknown } | null)?.type;
  const known = typeof type === 'string' ? bodyParserErrors[type] : undefined;
  if (known) return new HttpError(...known);
  return new HttpError('internal_error');
}

export const notFound: RequestHandler = (req, _res, next) => {
  next(new HttpError('not_found', `no route for ${req.method} ${req.path}`));
};

const quietCodes = new Set<ErrorCode>([
  'queue_full',
  'shutting_down',
  'overloaded',
  'database_unavailable',
  'too_many_streams',
  'deadline_exceeded',
  'auth_unavailable', // logged once by the key source (api/edge/jwks.ts)
  'client_not_built', // said once at start (api/app.ts)
  'settings_missing', // said at most once a minute (api/read/settings-missing-log.ts)
]);

/** The central error handler; `onAnswer` sees each error answered (the logs that count them). */
export const createErrorHandler =
  (onAnswer: (error: HttpError) => void = () => undefined): ErrorRequestHandler =>
  (error: unknown, req, res, next) => {
    if (res.headersSent) {
      next(error);
      return;
    }
    const httpError = toHttpError(error);
    onAnswer(httpError);
    // Client mistakes and refusals (overload, shutdown) are ordinary; an unavailable database is
    // logged by the database's outage log (first cause, then a count), not once per request; anything
    // else is logged once, with its cause (message and code: lib/infra/logger.ts).
    if (httpError.status >= 500 && !quietCodes.has(httpError.code)) {
      requestLoggerOf(req).error({ err: error }, httpError.message);
    }
    res.status(httpError.status).set(httpError.headers);
    res.json(errorBody(httpError.code, httpError.message));
  };

/** The handler with no observer (tests that build a bare app). */
export const errorHandler: ErrorRequestHandler = createErrorHandler();

import type { ErrorRequestHandler, RequestHandler } from 'express';
import { isDatabaseUnavailable } from '../lib/db.ts';
import { HeartbeatRejected } from './heartbeat-writer.ts';
import { requestLoggerOf } from './request-log.ts';

/** An error with a status and a stable machine-readable code, answered as JSON. */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
    this.name = 'HttpError';
  }
}

export interface ErrorBody {
  error: { code: string; message: string };
}

/** body-parser's error types and the answer each deserves. */
const bodyParserErrors: Record<string, [number, string, string]> = {
  'entity.parse.failed': [400, 'invalid_json', 'the request body is not valid JSON'],
  'entity.too.large': [413, 'payload_too_large', 'the request body is too large'],
  'encoding.unsupported': [415, 'unsupported_media_type', 'the content encoding is not supported'],
  'charset.unsupported': [415, 'unsupported_media_type', 'the charset is not supported'],
  'request.aborted': [400, 'request_aborted', 'the request was aborted by the client'],
  'request.size.invalid': [400, 'invalid_body', 'the request body size does not match its length'],
};

/** Maps anything thrown while serving a request to the HttpError it is answered with. */
export function toHttpError(error: unknown): HttpError {
  if (error instanceof HttpError) return error;
  if (isDatabaseUnavailable(error)) {
    return new HttpError(503, 'database_unavailable', 'the database is unavailable, retry later', {
      'Retry-After': '1',
    });
  }
  if (error instanceof HeartbeatRejected) {
    return new HttpError(503, error.reason, error.message, { 'Retry-After': '1' });
  }
  // A path with broken percent-encoding (the router fails to decode a parameter).
  if (error instanceof URIError) {
    return new HttpError(400, 'invalid_path', 'the request path is not valid percent-encoding');
  }
  const type = (error as { type?: unknown } | null)?.type;
  const known = typeof type === 'string' ? bodyParserErrors[type] : undefined;
  if (known) return new HttpError(...known);
  return new HttpError(500, 'internal_error', 'internal error');
}

export const notFound: RequestHandler = (req, _res, next) => {
  next(new HttpError(404, 'not_found', `no route for ${req.method} ${req.path}`));
};

const quietCodes = new Set(['queue_full', 'shutting_down', 'overloaded', 'database_unavailable']);

export const errorHandler: ErrorRequestHandler = (error: unknown, req, res, next) => {
  if (res.headersSent) {
    next(error);
    return;
  }
  const httpError = toHttpError(error);
  // Client mistakes and refusals (overload, shutdown) are ordinary; an unavailable database is
  // logged by the database's outage log (first cause, then a count), not once per request; anything
  // else is logged once, with its cause (message and code: lib/logger.ts).
  if (httpError.status >= 500 && !quietCodes.has(httpError.code)) {
    requestLoggerOf(req).error({ err: error }, httpError.message);
  }
  res.status(httpError.status).set(httpError.headers);
  const body: ErrorBody = { error: { code: httpError.code, message: httpError.message } };
  res.json(body);
};

/**
 * One log line per request ("request completed", with the request id, method, URL, status and
 * duration; readable at a terminal as `POST /status/update 200 3 ms`: lib/logger.ts), the
 * X-Request-Id header, and `requestLoggerOf(req)` for the error handler.
 *
 * pino-http does the same, but builds a child logger for every request (serializing the request
 * into its bindings up front, whether anything is logged or not) and attaches three listeners;
 * on the single-heartbeat path that was the largest cost after Express itself
 * (docs/request-cost.md). Here the child logger is made only when something logs through it, and
 * the line is built only when LOG_LEVEL lets it through. The request's id and logger live in
 * res.locals (api/request-locals.ts), never on Node's prototypes: a library that sets `req.id`
 * (pino-http does) must keep working.
 */
import { randomUUID } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { type ServerResponse } from 'node:http';
import type { Logger } from '../../lib/infra/logger.ts';
import { redactAccessToken } from './auth.ts';
import { requestSlot } from './request-locals.ts';

const SANE_ID = /^[\w.:-]{1,128}$/;

/** What begin() keeps for the request (api/edge/request-locals.ts). */
interface Logged {
  id: string;
  logger: Logger;
  child: Logger | undefined;
}
const logged = requestSlot<Logged>('requestLog');

function loggedOf(req: IncomingMessage): Logged {
  const state = logged.ofRequest(req);
  if (state === undefined) throw new Error('a request outside the request log middleware');
  return state;
}

/** The request id: a sane X-Request-Id from the client, or a new UUID. */
export const requestIdOf = (req: IncomingMessage): string => loggedOf(req).id;

/** A logger whose lines carry this request's id, method and URL, made on first use. */
export function requestLoggerOf(req: IncomingMessage): Logger {
  const state = loggedOf(req);
  return (state.child ??= state.logger.child({ req: describe(req, state.id) }));
}

// The stream may carry a token in its query (access_token): never in a log line.
const describe = (req: IncomingMessage, id: string) => ({
  id,
  method: req.method,
  url: redactAccessToken(asked(req)),
});

// Express rewrites req.url inside a mounted router (/demo/x becomes /x): what was asked.
const asked = (req: IncomingMessage) =>
  (req as { originalUrl?: string }).originalUrl ?? req.url ?? '';

export interface RequestLogOptions {
  /** Paths never logged (probes, scrapes). */
  ignore: RegExp;
  /** Responses not logged (e.g. refused by admission control, which counts them instead). */
  skip?: (res: ServerResponse) => boolean;
  /** Paths logged at debug, not info (the demo page's files: a dozen for each page load). */
  quiet?: RegExp;
}

/** The request log's two halves; api/edge/edge.ts runs them in the one per-request layer it mounts. */
export interface RequestLog {
  /** At the start: the request id (X-Request-Id, requestIdOf) and the logger (requestLoggerOf). */
  begin(req: IncomingMessage, res: ServerResponse): void;
  /** When the response closes: the request line, `elapsedMs` after begin(). */
  end(res: ServerResponse, elapsedMs: number): void;
}

export function createRequestLog(
  logger: Logger,
  { ignore, skip, quiet }: RequestLogOptions,
): RequestLog {
  return {
    begin(req, res) {
      const given = req.headers['x-request-id'];
      const id = typeof given === 'string' && SANE_ID.test(given) ? given : randomUUID();
      logged.set(res, { id, logger, child: undefined });
      res.setHeader('X-Request-Id', id);
    },
    // 'close' comes after 'finish' for a complete response, and alone for an aborted one.
    end(res, elapsedMs) {
      const req = res.req;
      if (!logger.isLevelEnabled('info') || ignore.test(req.url ?? '') || skip?.(res)) return;
      const level = quiet?.test(asked(req)) ? 'debug' : 'info';
      if (level === 'debug' && !logger.isLevelEnabled('debug')) return;
      const state = logged.get(res);
      logger[level](
        {
          req: describe(req, state?.id ?? ''),
          res: { statusCode: res.statusCode },
          responseTime: Math.round(elapsedMs),
        },
        res.writableFinished ? 'request completed' : closedEarly(res),
      );
    },
  };
}

/** A stream the client closed is how a stream normally ends; any other early close is an abort. */
function closedEarly(res: ServerResponse): string {
  const type = res.getHeader('content-type');
  return typeof type === 'string' && type.startsWith('text/event-stream')
    ? 'stream closed'
    : 'request aborted';
}

/**
 * One log line per request ("request completed", with the request id, method, URL, status and
 * duration), the X-Request-Id header, and `req.log` for the error handler.
 *
 * pino-http does the same, but builds a child logger for every request (serializing the request
 * into its bindings up front, whether anything is logged or not) and attaches three listeners;
 * on the single-heartbeat path that was the largest cost after Express itself
 * (docs/request-cost.md). Here the child logger is made only when something logs through
 * `req.log`, and the line is built only when LOG_LEVEL lets it through.
 */
import { randomUUID } from 'node:crypto';
import { IncomingMessage, type ServerResponse } from 'node:http';
import type { Logger } from '../../lib/infra/logger.ts';
import { redactAccessToken } from './auth.ts';
import { requestSlot } from './request-locals.ts';

declare module 'http' {
  interface IncomingMessage {
    /** The request id: a sane X-Request-Id from the client, or a new UUID. */
    readonly id: string;
    /** A logger whose lines carry this request's id, method and URL. */
    readonly log: Logger;
  }
}

const SANE_ID = /^[\w.:-]{1,128}$/;

/** What begin() keeps for the request (api/edge/request-locals.ts). */
interface Logged {
  id: string;
  logger: Logger;
  child: Logger | undefined;
}
const logged = requestSlot<Logged>('requestLog');

// `req.id` and `req.log` are getters on the prototype, reading what begin() kept in res.locals:
// defining or adding them on every request object cost CPU and garbage on the hot path.
Object.defineProperty(IncomingMessage.prototype, 'id', {
  configurable: true,
  get(this: IncomingMessage): string {
    const state = logged.ofRequest(this);
    if (state === undefined) throw new Error('req.id used outside the request log middleware');
    return state.id;
  },
});
Object.defineProperty(IncomingMessage.prototype, 'log', {
  configurable: true,
  get(this: IncomingMessage): Logger {
    const state = logged.ofRequest(this);
    if (state === undefined) throw new Error('req.log used outside the request log middleware');
    return (state.child ??= state.logger.child({ req: describe(this) }));
  },
});

// The stream may carry a token in its query (access_token): never in a log line.
const describe = (req: IncomingMessage) => ({
  id: req.id,
  method: req.method,
  // Express rewrites req.url inside a mounted router (/demo/x becomes /x): log what was asked.
  url: redactAccessToken((req as { originalUrl?: string }).originalUrl ?? req.url ?? ''),
});

export interface RequestLogOptions {
  /** Paths never logged (probes, scrapes). */
  ignore: RegExp;
  /** Responses not logged (e.g. refused by admission control, which counts them instead). */
  skip?: (res: ServerResponse) => boolean;
}

/** The request log's two halves; api/edge/edge.ts runs them in the one per-request layer it mounts. */
export interface RequestLog {
  /** At the start: the request id (X-Request-Id, `req.id`) and `req.log`. */
  begin(req: IncomingMessage, res: ServerResponse): void;
  /** When the response closes: the request line, `elapsedMs` after begin(). */
  end(res: ServerResponse, elapsedMs: number): void;
}

export function createRequestLog(logger: Logger, { ignore, skip }: RequestLogOptions): RequestLog {
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
      logger.info(
        {
          req: describe(req),
          res: { statusCode: res.statusCode },
          responseTime: Math.round(elapsedMs),
        },
        res.writableFinished ? 'request completed' : 'request aborted',
      );
    },
  };
}

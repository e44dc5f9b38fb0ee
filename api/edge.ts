/**
 * What every request gets before routing, as one Express layer that adds one 'close' listener:
 * the request id and the request log line (api/request-log.ts), the security headers
 * (api/security-headers.ts), the request duration histogram (api/metrics.ts) and admission
 * control's release (api/admission.ts).
 *
 * Each of these was its own layer with its own listener ('close' for the log and admission,
 * 'finish' for the histogram): on the single-heartbeat path the router's layers, the listeners and
 * the closures they held cost as much as the work itself (docs/request-cost.md). Together they
 * keep the order they had as separate layers: CORS (when configured) still runs after the request
 * id and before the security headers and the timing, so a preflight it answers is logged but gets
 * no security headers and is not timed.
 */
import type { RequestHandler, Request, Response } from 'express';
import type { RequestLog } from './request-log.ts';
import type { HeaderList } from './security-headers.ts';

export interface EdgeParts {
  requestLog: RequestLog;
  /** Set on every response CORS did not answer. */
  headers: HeaderList;
  /** Called for every finished response CORS did not answer, with its duration. */
  observe: (req: Request, res: Response, seconds: number) => void;
  /** Called for every response once it has closed (admission control's release). */
  onClose: (res: Response) => void;
  cors?: RequestHandler | undefined;
}

const startedAt = Symbol('startedAt');
/** performance.now() when the response was timed for the histogram (after CORS). */
const timedAt = Symbol('timedAt');
type Edged = Response & { [startedAt]: number; [timedAt]: number | undefined };

export function createEdge({
  requestLog,
  headers,
  observe,
  onClose,
  cors,
}: EdgeParts): RequestHandler {
  const { names, values } = headers;
  const count = names.length;

  function closed(this: Edged) {
    const now = performance.now();
    const timed = this[timedAt];
    if (timed !== undefined && this.writableFinished) {
      observe(this.req, this, (now - timed) / 1000);
    }
    onClose(this);
    requestLog.end(this, now - this[startedAt]);
  }

  const afterCors = (res: Edged) => {
    for (let i = 0; i < count; i += 1) res.setHeader(names[i]!, values[i]!);
    res[timedAt] = performance.now();
  };

  return (req, response, next) => {
    const res = response as Edged;
    res[startedAt] = performance.now();
    res[timedAt] = undefined;
    requestLog.begin(req, res);
    res.on('close', closed);
    if (cors === undefined) {
      afterCors(res);
      next();
      return;
    }
    void cors(req, res, (error?: unknown) => {
      if (error !== undefined) {
        next(error);
        return;
      }
      afterCors(res);
      next();
    });
  };
}

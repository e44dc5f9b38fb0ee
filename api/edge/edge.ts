/**
 * What every request gets before routing, as one Express layer that adds one 'close' listener:
 * the request id and the request log line (api/edge/request-log.ts), the security headers
 * (api/edge/security-headers.ts), the request duration histogram (api/metrics.ts) and admission
 * control's release (api/edge/admission.ts).
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
import { requestSlot } from './request-locals.ts';
import { setHeaders, type HeaderList } from './security-headers.ts';

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

/** performance.now() when the edge saw the request, and when it timed it for the histogram. */
interface Timing {
  startedAt: number;
  /** Unset for a response CORS answered (a preflight): it is not timed. */
  timedAt: number | undefined;
}
const timing = requestSlot<Timing>('timing');

export function createEdge({
  requestLog,
  headers,
  observe,
  onClose,
  cors,
}: EdgeParts): RequestHandler {
  function closed(this: Response) {
    const now = performance.now();
    const times = timing.get(this)!;
    if (times.timedAt !== undefined && this.writableFinished) {
      observe(this.req, this, (now - times.timedAt) / 1000);
    }
    onClose(this);
    requestLog.end(this, now - times.startedAt);
  }

  const afterCors = (res: Response, times: Timing) => {
    setHeaders(res, headers);
    times.timedAt = performance.now();
  };

  return (req, res, next) => {
    const times: Timing = { startedAt: performance.now(), timedAt: undefined };
    timing.set(res, times);
    requestLog.begin(req, res);
    res.on('close', closed);
    if (cors === undefined) {
      afterCors(res, times);
      next();
      return;
    }
    void cors(req, res, (error?: unknown) => {
      if (error !== undefined) {
        next(error);
        return;
      }
      afterCors(res, times);
      next();
    });
  };
}

/**
 * Values kept for the rest of one request (its id and logger, its timing, the weight admission
 * control admitted it with, the authenticated principal) live in `res.locals`, the object Express
 * creates for every request (without a prototype: a dictionary) for exactly this.
 *
 * Never as new properties of `req` or `res`. Where Express sets their prototypes per request (any
 * server not started by http/server.ts, which has them born with those prototypes:
 * http/express-prototypes.ts), they share no hidden class, and each property added afterwards
 * makes V8 build another one and copy the property table, about 1.7 KB of garbage per property per
 * request: on the single-heartbeat path, the largest part of what Pulse allocated beyond a bare
 * Express handler (docs/request-cost.md). Even with shared hidden classes, every added property is
 * one more transition on the request path; a key in `res.locals` is not.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';

type WithLocals = ServerResponse & { locals?: Record<PropertyKey, unknown> };

export interface RequestSlot<T> {
  /** The value set for this response's request, if any. */
  get(res: ServerResponse): T | undefined;
  /** The value set for this request (through `req.res`, which Express sets), if any. */
  ofRequest(req: IncomingMessage): T | undefined;
  set(res: ServerResponse, value: T | undefined): void;
}

export function requestSlot<T>(name: string): RequestSlot<T> {
  const key = Symbol(name);
  const get = (res: ServerResponse | undefined): T | undefined =>
    (res as WithLocals | undefined)?.locals?.[key] as T | undefined;
  return {
    get,
    ofRequest: (req) => get((req as IncomingMessage & { res?: ServerResponse }).res),
    set(res, value) {
      const locals = (res as WithLocals).locals;
      if (locals === undefined) throw new Error('res.locals is missing: not an Express response');
      locals[key] = value;
    },
  };
}

import type { Request, RequestHandler, Response } from 'express';
import helmet from 'helmet';

/**
 * Security headers for a JSON API, chosen by helmet and computed once. helmet runs a dozen small
 * middlewares per request, each setting a header that never changes for this API (no nonces, no
 * per-request directives): replaying what it set at startup keeps helmet the source of truth and
 * costs one loop per request (docs/request-cost.md).
 */
export function securityHeaders(): RequestHandler {
  const middleware = helmet({
    // JSON is never rendered: allow nothing, frame nothing.
    contentSecurityPolicy: {
      useDefaults: false,
      directives: { defaultSrc: ["'none'"], frameAncestors: ["'none'"] },
    },
    xFrameOptions: { action: 'deny' },
  });
  const headers: Array<[string, string]> = [];
  const recorder = {
    setHeader(name: string, value: string) {
      headers.push([name, value]);
    },
    // X-Powered-By: the app never sets it (app.disable('x-powered-by')).
    removeHeader() {},
  };
  let finished = false;
  void middleware({} as Request, recorder as unknown as Response, (error?: unknown) => {
    if (error) throw error instanceof Error ? error : new Error('helmet failed');
    finished = true;
  });
  if (!finished) throw new Error('helmet did not set its headers synchronously');
  return (_req, res, next) => {
    for (const [name, value] of headers) res.setHeader(name, value);
    next();
  };
}

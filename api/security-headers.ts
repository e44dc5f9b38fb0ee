import type { Request, Response } from 'express';
import helmet from 'helmet';

/** Header names and values, in the order helmet set them. */
export interface HeaderList {
  readonly names: readonly string[];
  readonly values: readonly string[];
}

/**
 * Security headers for a JSON API, chosen by helmet and computed once. helmet runs a dozen small
 * middlewares per request, each setting a header that never changes for this API (no nonces, no
 * per-request directives): replaying what it set at startup keeps helmet the source of truth and
 * costs one loop per request (docs/request-cost.md). api/edge.ts sets them on every response.
 */
export function securityHeaderList(): HeaderList {
  const middleware = helmet({
    // JSON is never rendered: allow nothing, frame nothing.
    contentSecurityPolicy: {
      useDefaults: false,
      directives: { defaultSrc: ["'none'"], frameAncestors: ["'none'"] },
    },
    xFrameOptions: { action: 'deny' },
  });
  const names: string[] = [];
  const values: string[] = [];
  const recorder = {
    setHeader(name: string, value: string) {
      names.push(name);
      values.push(value);
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
  return { names, values };
}

import type { Request, Response } from 'express';
import helmet from 'helmet';

/** Header names and values, in the order helmet set them. */
export interface HeaderList {
  readonly names: readonly string[];
  readonly values: readonly string[];
}

/**
 * The headers of OWASP's REST Security Cheat Sheet ("Security Headers": the ones to send on API
 * responses, with Cache-Control, which authentication sets) and the two a JSON answer still
 * benefits from: Referrer-Policy (OWASP's defence in depth for APIs) and
 * Cross-Origin-Resource-Policy (keeps other sites' pages from loading the JSON as a no-cors
 * resource).
 */
const API_HEADERS = new Set([
  'content-security-policy',
  'strict-transport-security',
  'x-content-type-options',
  'x-frame-options',
  'referrer-policy',
  'cross-origin-resource-policy',
]);

export interface SecurityHeaders {
  /** For every response (api/edge/edge.ts). */
  api: HeaderList;
  /**
   * The rest of helmet's set, for HTML pages only (the demo page, api/demo.ts): they govern how a
   * browser treats a document (window openers, agent clusters, DNS prefetching of its links,
   * legacy download and XSS-filter behaviour, Adobe cross-domain policies), and a JSON answer is
   * never rendered as one (Content-Type, nosniff, CSP default-src 'none'). OWASP's cheat sheet
   * says as much of HTML-oriented headers on APIs; each header costs about 0.4 KB of garbage and
   * a fraction of a microsecond per response (docs/request-cost.md).
   */
  document: HeaderList;
}

/**
 * Security headers chosen by helmet and computed once. helmet runs a dozen small middlewares per
 * request, each setting a header that never changes for this API (no nonces, no per-request
 * directives): replaying what it set at startup keeps helmet the source of truth and costs one
 * loop per request (docs/request-cost.md).
 */
export function securityHeaders(): SecurityHeaders {
  const middleware = helmet({
    // JSON is never rendered: allow nothing, frame nothing.
    contentSecurityPolicy: {
      useDefaults: false,
      directives: { defaultSrc: ["'none'"], frameAncestors: ["'none'"] },
    },
    xFrameOptions: { action: 'deny' },
  });
  const api = { names: [] as string[], values: [] as string[] };
  const document = { names: [] as string[], values: [] as string[] };
  const recorder = {
    setHeader(name: string, value: string) {
      const list = API_HEADERS.has(name.toLowerCase()) ? api : document;
      list.names.push(name);
      list.values.push(value);
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
  if (api.names.length !== API_HEADERS.size)
    throw new Error('helmet no longer sets every API header');
  return { api, document };
}

/** Sets the listed headers on a response. */
export function setHeaders(
  res: { setHeader(name: string, value: string): unknown },
  list: HeaderList,
) {
  const { names, values } = list;
  for (let i = 0; i < names.length; i += 1) res.setHeader(names[i]!, values[i]!);
}
